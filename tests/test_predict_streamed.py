"""``predict`` inverts the uint8 label map (nearest neighbour) instead of K probabilities, and a slab-wise run
reads its image back slab by slab from a temporary file: the files must be those of the full-size path, on a
non-RAS, anisotropic scan, for every variant and preprocessing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from full_size_reference import full_size_probabilities
from test_predict import CLASSES, bright_scan, make_run, save_tilted
from test_streamed import rounding_net

import medseg_mem.variants.trained as trained_module
from medseg_mem.data.transforms import make_settings
from medseg_mem.core.device import resolve_device
from medseg_mem.predict import Segmenter, predict
from medseg_mem.inference import cut_slab
from medseg_mem.predict.files import SpilledImage, write_label_map
from medseg_mem.predict.restore import restore_grid
from medseg_mem.variants.trained_run import open_trained_run
from medseg_mem.variants import get_variant


@pytest.fixture
def varied(monkeypatch):
    """The run's random U-Nets plus a rounding term, so that all three classes occur in the label map."""
    load = trained_module.load_networks

    def load_varied(paths, device, channels_last=False, precision="fp32", specs=None):
        nets = load(paths, device, channels_last, precision, specs)
        return {name: (lambda x, net=net: net(x) + 3 * rounding_net(len(CLASSES))(x)) for name, net in nets.items()}

    monkeypatch.setattr(trained_module, "load_networks", load_varied)


def full_size_prediction(run, scan) -> np.ndarray:
    """Labels as ``predict`` made them before streaming: K probabilities inverted (trilinear), then argmax."""
    trained = open_trained_run(run)
    segmenter = Segmenter(trained, resolve_device("cpu"))
    data = segmenter.preprocess(scan)
    with torch.inference_mode():
        image = data["image"].as_tensor()[None].float()
        probabilities = full_size_probabilities(trained.variant, segmenter.run.nets, image, trained.model,
                                                trained.num_classes)[0].float().cpu()  # fmt: skip
    return restore_grid(segmenter.pipeline, data, probabilities.clone(), scan)


def textured_scan() -> np.ndarray:
    rng = np.random.default_rng(3)
    scan = bright_scan((21, 24, 17)) * 0.02
    return (scan + rng.normal(0, 0.4, scan.shape) * (scan > 0)).astype(np.float32)


@pytest.mark.parametrize("variant", ["full", "patch", "cascade"])
@pytest.mark.parametrize("settings", [{}, {"crop_foreground": True}, {"spacing": (1.0, 1.25, 1.0)}],
                         ids=["native", "crop-foreground", "resampled"])  # fmt: skip
def test_files_equal_the_full_size_path(tmp_path, varied, variant, settings):
    run = make_run(tmp_path, variant, settings=make_settings(["MRI"], **settings))
    scan = save_tilted(textured_scan(), tmp_path / "in" / "case.nii.gz")  # LPS-like, permuted, 1.5/2.0/1.5 mm
    (written,) = predict(run, [scan], tmp_path / "out", device="cpu", progress=False).written
    reference = write_label_map(full_size_prediction(run, scan), scan, tmp_path / "ref.nii.gz", len(CLASSES))
    new, old = nib.load(str(written)), nib.load(str(reference))
    assert new.header.binaryblock == old.header.binaryblock
    np.testing.assert_array_equal(np.asarray(new.dataobj), np.asarray(old.dataobj))
    assert len(np.unique(np.asarray(new.dataobj))) == len(CLASSES)


def test_spilled_image_cuts_what_cut_slab_cuts():
    image = torch.randn(2, 5, 6, 11)
    with SpilledImage(image, "cpu") as spilled:
        assert spilled.shape == (1, 2, 5, 6, 11)
        for start in range(11):
            slab = spilled.cut(start, 4, axis=-1)
            assert slab.is_contiguous() and torch.equal(slab, cut_slab(image[None], start, 4, axis=-1))
        with pytest.raises(ValueError):
            spilled.cut(0, 4, axis=2)


def test_only_a_single_slab_stage_reads_its_image_from_the_file():
    assert [get_variant(name).reads_slabs_only() for name in ("full", "patch", "cascade")] == [False, True, False]
