"""How unsure a trained run is of one scan: the scores ``medseg-mem suggest`` ranks unlabelled scans by.

Every score is in [0, 1], higher meaning less sure, computed on the preprocessed scan from the variant's class
probabilities (``Variant.probabilities``, one ``(1, K, X, Y, Z)`` float32 tensor on the CPU):

* ``entropy``: mean voxel entropy of the probabilities (divided by ``log K``) over the predicted foreground (argmax
  > 0). A scan where nothing is predicted as foreground scores 1: the model found nothing to be sure of.
* ``mirror``: disagreement between test-time mirrors: the scan is segmented as it is and flipped along each
  spatial axis (4 passes); the score is 1 minus the mean agreement of each flipped label map with the unflipped
  one over the voxels either calls foreground.
* ``stages`` (cascade only): disagreement between the cascade's stages: 1 minus the agreement of stage 1's label
  map (upsampled) with the final one over the voxels either calls foreground.

Example:
    >>> probabilities = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1, 1).expand(1, 2, 2, 2, 2)
    >>> round(float(foreground_entropy(probabilities)), 3)  # argmax is background everywhere: nothing found
    1.0
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

from medseg_mem.core.errors import MedsegError

SCORE_NAMES: Tuple[str, ...] = ("entropy", "mirror", "stages")
MIRROR_FLIPS = ((2,), (3,), (4,))  # each spatial axis of a (B, C, X, Y, Z) tensor


def foreground_entropy(probabilities: torch.Tensor) -> float:
    """Mean normalised entropy over the predicted foreground of ``(1, K, X, Y, Z)`` probabilities (1 when none)."""
    foreground = probabilities.argmax(dim=1) > 0
    if not bool(foreground.any()):
        return 1.0
    p = probabilities.clamp_min(1e-12)
    entropy = -(p * p.log()).sum(dim=1) / math.log(probabilities.shape[1])
    return float(entropy[foreground].mean())


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of the voxels that ``a`` or ``b`` (label maps) call foreground on which they agree (1 when none)."""
    either = (a > 0) | (b > 0)
    if not bool(either.any()):
        return 1.0
    return float((a[either] == b[either]).float().mean())


def mirror_disagreement(probabilities_of: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                        plain: torch.Tensor) -> float:  # fmt: skip
    """1 minus the mean :func:`agreement` of the label maps of ``image`` flipped along each axis (flipped back)
    with ``plain``'s (the unflipped probabilities)."""
    reference = plain.argmax(dim=1)
    scores = []
    for dims in MIRROR_FLIPS:
        flipped = probabilities_of(image.flip(dims)).flip(dims)
        scores.append(agreement(flipped.argmax(dim=1), reference))
    return 1.0 - sum(scores) / len(scores)


def stage_disagreement(run, image: torch.Tensor, plain: torch.Tensor) -> float:
    """1 minus the :func:`agreement` of the cascade's stage-1 label map (upsampled) with its final one (``run``: a
    :class:`~medseg_mem.variants.trained.TrainedVariant`)."""
    from medseg_mem.variants.resample import resample_image, resample_probabilities, scaled_size

    low_stage = run.variant.stages()[0]
    low = resample_image(image, scaled_size(image.shape[2:], run.model.downsample))
    low_probabilities = torch.softmax(run.stages[low_stage.name].logits(low).float(), dim=1)
    upsampled = resample_probabilities(low_probabilities, image.shape[2:])
    return 1.0 - agreement(upsampled.argmax(dim=1), plain.argmax(dim=1))


def check_score(score: str, variant: str) -> None:
    """Refuse an unknown score, and ``stages`` for a variant with one stage.

    Raises:
        MedsegError: naming ``--score``, the rule and the value.
    """
    if score not in SCORE_NAMES:
        raise MedsegError(f"--score must be one of {', '.join(SCORE_NAMES)}; got {score!r}")
    if score == "stages" and variant != "cascade":
        raise MedsegError(f"--score stages compares a cascade's two stages, but the run is a {variant} run; use "
                          "--score entropy or mirror")  # fmt: skip


def score_scan(score: str, segmenter, image: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """``(score, probabilities)`` of one preprocessed ``(1, C, X, Y, Z)`` image with a
    :class:`~medseg_mem.predict.segment.Segmenter`'s networks."""
    run = segmenter.run

    def probabilities_of(x: torch.Tensor) -> torch.Tensor:
        return run.probabilities(x).float().cpu()

    with torch.inference_mode():
        plain = probabilities_of(image)
        scores: Dict[str, Callable[[], float]] = {
            "entropy": lambda: foreground_entropy(plain),
            "mirror": lambda: mirror_disagreement(probabilities_of, image, plain),
            "stages": lambda: stage_disagreement(run, image, plain),
        }
        return scores[score](), plain
