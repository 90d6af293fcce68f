"""Loss class weights: counted from the training labels, sqrt-balanced, and used by the loss."""

import numpy as np
import pytest
import torch

from medseg_mem.core.config import TrainConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.training.class_weights import balanced_weights, class_weights, label_counts
from medseg_mem.training.loop import make_loss
from medseg_mem.variants import get_variant


def test_balanced_weights_give_the_most_frequent_class_one_and_rarer_ones_more():
    assert balanced_weights(np.array([400, 100, 25])) == (1.0, 2.0, 4.0)
    assert balanced_weights(np.array([400, 0, 25])) == (1.0, 4.0, 4.0)  # an unseen class gets the largest weight


def test_label_counts_add_up_the_training_labels(tiny_prepared):
    expected = np.zeros(tiny_prepared.num_classes, dtype=np.int64)
    for case_id in tiny_prepared.ids("train"):
        label = tiny_prepared.load(case_id, mmap=False).label
        expected += np.bincount(label.reshape(-1), minlength=tiny_prepared.num_classes)
    assert np.array_equal(label_counts(tiny_prepared), expected)
    assert class_weights("none", tiny_prepared) is None
    assert class_weights("balanced", tiny_prepared) == balanced_weights(expected)


@pytest.mark.parametrize("loss", ["dice_ce", "dice"])
def test_weights_change_the_loss_of_a_rare_class_error(loss):
    stage = get_variant("full").stages()[0]
    label = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label[0, 0, :2, :2, :2] = 2  # a rare class, predicted as background below
    logits = torch.zeros(1, 3, 4, 4, 4)
    logits[:, 0] = 4.0
    train = TrainConfig(loss=loss)
    plain = make_loss(stage, train)(logits, label)
    weighted = make_loss(stage, train, (1.0, 1.0, 5.0))(logits, label)
    assert weighted > plain


def test_unknown_rule_names_the_option():
    with pytest.raises(OptionError, match="--class-weights"):
        TrainConfig(class_weights="inverse")
