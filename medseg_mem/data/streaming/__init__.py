"""Out-of-core preprocessing: a scan read, preprocessed and its label map written slab by slab, in memory that
does not grow with the scan.

The engine reproduces :func:`~medseg_mem.data.transforms.build_preprocessing` and ``Invertd`` one range of slices
at a time (tested voxel for voxel against them):

* :mod:`~medseg_mem.data.streaming.gunzip` - a ``.nii.gz`` inflated into a temporary ``.nii`` in one pass;
* :mod:`~medseg_mem.data.streaming.source` - a NIfTI read by slabs through nibabel's array proxy;
* :mod:`~medseg_mem.data.streaming.geometry` - orientation and ``Spacing``'s grid from the header alone;
* :mod:`~medseg_mem.data.streaming.sampler` - MONAI's resampling for a range of output slices, with its halo;
* :mod:`~medseg_mem.data.streaming.statistics` - nonzero moments, the foreground box, per-slab normalisation;
* :mod:`~medseg_mem.data.streaming.downsample` - the cascade's small stage-1 volume from a stream of slabs;
* :mod:`~medseg_mem.data.streaming.preprocess` - :class:`ScanStream`, the preprocessed slabs in order;
* :mod:`~medseg_mem.data.streaming.writer` - :class:`LabelMapWriter`, the label map streamed into NIfTI.

Importing this package is cheap; the names below load their modules (and torch, MONAI) on first use.

Example:
    >>> from medseg_mem.data.streaming import LabelMapWriter, stream_scan  # doctest: +SKIP
"""

from __future__ import annotations

from medseg_mem.core.lazy import lazy_attributes

_EXPORTS = {
    "LabelMapWriter": "writer",
    "ScanFile": "source",
    "ScanStream": "preprocess",
    "open_scan": "source",
    "stream_scan": "preprocess",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
