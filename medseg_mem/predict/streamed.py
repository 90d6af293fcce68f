"""``predict`` out of core: a scan read, preprocessed, segmented and written a chunk of slices at a time, so the
process does not grow with the scan's last axis.

The scan is opened by :func:`~medseg_mem.data.streaming.preprocess.stream_scan` (a ``.nii.gz`` is inflated into
``$TMPDIR`` first; the run's pipeline is applied slab by slab, its statistics gathered in a first pass when the run
needs them), the variant segments it with :meth:`~medseg_mem.variants.base.Variant.stream` (``patch``: the slab
network per chunk; ``cascade``: stage 1 on the downsampled volume made in one pass, then stage 2 per chunk) and
:class:`~medseg_mem.data.streaming.writer.LabelMapWriter` inverts each chunk's labels into the scan's grid and
writes them; the label map appears atomically at the end, or not at all. The labels equal the in-memory path's
(:class:`~medseg_mem.predict.segment.Segmenter`) voxel for voxel without resampling; with ``--spacing`` they may
differ where the two resamplings round differently (tested).

``--out-of-core`` picks the path: ``never`` the in-memory one, ``always`` this one, ``auto`` (default) this one
when the in-memory plan does not fit the budget and this one does (:mod:`~medseg_mem.predict.guard`).

Example:
    >>> stream_segment(segmenter, Path("ct.nii.gz"), Path("out/ct_seg.nii.gz"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from pathlib import Path

from medseg_mem.core.config import InferenceConfig
from medseg_mem.core.errors import OptionError
from medseg_mem.core.names import OUT_OF_CORE_NAMES


def check_out_of_core(mode: str, variant, inference: InferenceConfig, engine: str = "torch") -> str:
    """Validate ``--out-of-core`` against the run and the inference settings; ``mode`` back.

    Raises:
        OptionError: an unknown mode, or ``always`` for a variant that needs the whole volume (``full``), with
            ``--overlap`` above 0 (blended slabs cross the chunks) or with the onnxruntime engine.
    """
    if mode not in OUT_OF_CORE_NAMES:
        raise OptionError("--out-of-core", f"must be one of {', '.join(OUT_OF_CORE_NAMES)}", mode)
    if mode == "always" and not streamable(variant, inference, engine):
        raise OptionError("--out-of-core", f"always works for patch and cascade runs with --overlap 0 on the torch "
                          f"engine; this is a {variant.name} run, --overlap {inference.overlap}, engine {engine} "
                          "(use auto or never)", mode)  # fmt: skip
    return mode


def streamable(variant, inference: InferenceConfig, engine: str = "torch") -> bool:
    """Whether a run of ``variant`` can predict out of core with these settings."""
    return variant.streams() and inference.overlap == 0 and engine == "torch"


def stream_segment(segmenter, scan: Path, target: Path) -> Path:
    """Segment ``scan`` out of core with ``segmenter``'s networks and write its label map to ``target``.

    Raises:
        MedsegError: the scan cannot be read or decompressed (naming the file, and the slab for a truncated
            ``.nii.gz``), does not match the run, or the label map cannot be written (naming the folder); nothing
            is written then.
    """
    import torch

    from medseg_mem.data.streaming import LabelMapWriter, stream_scan
    from medseg_mem.predict.files import label_header
    from medseg_mem.predict.restore import resamples

    trained = segmenter.trained
    probabilities = resamples(trained.preprocessing)
    mark = functools.partial(label_header, num_classes=trained.num_classes)
    with stream_scan(Path(scan), trained.preprocessing) as stream:
        with LabelMapWriter(stream, Path(target), mark, probabilities) as writer:
            # no_grad, not inference_mode: the writer keeps a chunk's labels for its halo and inverts them later
            with segmenter.measured_stream(scan), torch.no_grad():
                run = segmenter.run
                for out in run.variant.stream(run, stream, segmenter.device, probabilities):
                    writer.write(out)
            return writer.commit()
