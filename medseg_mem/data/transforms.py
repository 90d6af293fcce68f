"""The preprocessing pipeline, built from MONAI dictionary transforms and a plain JSON-able settings dict.

``medseg-mem prepare`` and (later) ``medseg-mem predict`` both call :func:`build_preprocessing` with the
settings stored in the prepared dataset's ``manifest.json`` (and copied into checkpoints), so a scan is
preprocessed identically at training and at prediction time. The pipeline is::

    LoadImaged(image) [LoadImaged(label)]   NibabelReader (default) or ITKReader, float32
    EnsureChannelFirstd                     3D -> (1, X, Y, Z); 4D channel-last -> (C, X, Y, Z)
    Orientationd(axcodes="RAS")
    Spacingd                                optional: fixed mm or the dataset median (nnU-Net); image
                                            bilinear, label nearest. Off by default, as in the thesis.
    CropForegroundd                         optional: bounding box of the nonzero image voxels
    intensity normalisation per modality    nnU-Net rules, in place, see below
    CastToTyped                             image float32, label uint8

Normalisation (nnU-Net, Isensee et al. 2018): a channel whose modality is CT is clipped to the 0.5 / 99.5
percentiles of the foreground (label > 0) intensities of the training set and z-scored with their mean and
standard deviation (MONAI's ``ScaleIntensityRange`` with ``clip=True`` maps ``[lower, upper]`` linearly onto
``[(lower - mean) / std, (upper - mean) / std]``, which is exactly clip-then-z-score). Every other modality is
z-scored per channel over its nonzero voxels (``NormalizeIntensityd(nonzero=True, channel_wise=True)``). Both run
in place and in bounded memory, a slab of slices at a time (:mod:`medseg_mem.data.normalize`); a task with a CT
channel goes through :class:`PerChannelIntensityd`, the one hand-written transform (MONAI has no per-channel
dispatch of intensity transforms, and its range transform copies the whole image several times).

All spatial transforms work on MetaTensors and are invertible, so ``Invertd`` can map a prediction back
onto the original grid.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRange,
    Spacingd,
)

from medseg_mem.data.normalize import LeanNormalizeIntensityd, normalize_nonzero_, slab_views
from medseg_mem.core.errors import MedsegError

SETTINGS_FORMAT = "medseg-mem-preprocessing/1"
READER_CLASSES = {"nibabel": "NibabelReader", "itk": "ITKReader"}
ORIENTATION_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
PERCENTILES = (0.5, 99.5)
SAMPLES_PER_CASE = 10000


def is_ct(modality: str) -> bool:
    """Return True when a ``dataset.json`` modality name denotes CT (absolute Hounsfield intensities)."""
    return modality.strip().upper() == "CT"


def nonzero(x):
    """Foreground rule of ``--crop-foreground``: nonzero voxels (as nnU-Net; CT air is -1000, not 0)."""
    return x != 0


def make_settings(
    modalities: Sequence[str], reader: str = "nibabel", spacing=None, crop_foreground: bool = False
) -> dict:
    """Return the preprocessing settings; CT statistics and a median spacing are filled in later.

    Args:
        modalities: one name per image channel, from ``dataset.json`` ``modality``.
        reader: ``"nibabel"`` or ``"itk"``.
        spacing: ``None`` (native grid), ``"median"`` or three floats in mm.
        crop_foreground: crop each case to the bounding box of its nonzero image voxels.

    Example:
        >>> make_settings(["MRI"])["normalization"]
        [{'scheme': 'zscore_nonzero'}]
    """
    rule = "native" if spacing is None else ("median" if spacing == "median" else "fixed")
    norm = [_ct_placeholder() if is_ct(m) else {"scheme": "zscore_nonzero"} for m in modalities]
    return {
        "format": SETTINGS_FORMAT,
        "reader": reader,
        "axcodes": "RAS",
        "spacing_rule": rule,
        "spacing": [float(s) for s in spacing] if rule == "fixed" else None,
        "crop_foreground": bool(crop_foreground),
        "modalities": list(modalities),
        "normalization": norm,
    }


def _ct_placeholder() -> dict:
    return {"scheme": "ct", "lower": None, "upper": None, "mean": None, "std": None}


def needs_survey(settings: dict) -> bool:
    """True when the settings still lack dataset statistics (CT intensities or the median spacing)."""
    missing_ct = any(n["scheme"] == "ct" and n["mean"] is None for n in settings["normalization"])
    return missing_ct or (settings["spacing_rule"] == "median" and settings["spacing"] is None)


def ct_channels(settings: dict) -> List[int]:
    """Indices of the channels normalised with dataset-wide CT statistics."""
    return [i for i, n in enumerate(settings["normalization"]) if n["scheme"] == "ct"]


def foreground_sample(channel: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Up to 10000 evenly spaced foreground (label > 0) intensities of one channel (deterministic)."""
    values = np.asarray(channel)[np.asarray(label) > 0]
    if values.size > SAMPLES_PER_CASE:
        values = values[np.linspace(0, values.size - 1, SAMPLES_PER_CASE).astype(np.int64)]
    return values.astype(np.float64)


def ct_statistics(samples: Sequence[np.ndarray]) -> Optional[dict]:
    """nnU-Net CT statistics of the pooled foreground samples, or ``None`` when there are none."""
    values = np.concatenate(list(samples)) if len(samples) else np.zeros(0)
    if values.size == 0:
        return None
    lower, upper = np.percentile(values, PERCENTILES)
    std = float(values.std())
    return {
        "scheme": "ct",
        "lower": float(lower),
        "upper": float(upper),
        "mean": float(values.mean()),
        "std": std if std > 0 else 1.0,
    }


def ras_spacing(affine: np.ndarray) -> List[float]:
    """Voxel spacing in mm, in the axis order the grid has after ``Orientationd(axcodes="RAS")``."""
    affine = np.asarray(affine, dtype=np.float64)
    return ras_order(np.linalg.norm(affine[:3, :3], axis=0), affine)


def ras_order(values: Sequence[float], affine: np.ndarray) -> List[float]:
    """Per-axis ``values`` of a grid with ``affine`` (its shape, its spacing), in the axis order of the grid after
    ``Orientationd(axcodes="RAS")``."""
    out = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))):
        out[int(target)] = float(values[axis])
    return out


def median_spacing(spacings: Sequence[Sequence[float]]) -> List[float]:
    """Per-axis median of the RAS spacings of all cases (nnU-Net's target spacing)."""
    return [float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0)]


def make_reader(name: str):
    """A fresh MONAI reader for ``--reader`` ``name``: ``NibabelReader`` or ``ITKReader``."""
    from monai.data import ITKReader, NibabelReader

    return {"nibabel": NibabelReader, "itk": ITKReader}[name]()


def _keys(with_label: bool) -> List[str]:
    return ["image", "label"] if with_label else ["image"]


def load_steps(with_label: bool) -> int:
    """Number of leading pipeline steps that read files and add the channel axis (checked case by case)."""
    return 3 if with_label else 2


def build_preprocessing(settings: dict, with_label: bool = True):
    """Build the MONAI ``Compose`` described by ``settings``.

    Args:
        settings: the dict from :func:`make_settings` with statistics filled in, as stored in
            ``manifest.json`` under ``"preprocessing"`` (plain JSON: it survives a checkpoint).
        with_label: also load and transform the ``"label"`` key (training); ``False`` for prediction.

    Returns:
        a ``monai.transforms.Compose`` taking ``{"image": path[, "label": path]}`` and returning MetaTensors
        ``image`` float32 (C, X, Y, Z) and ``label`` uint8 (1, X, Y, Z). The first :func:`load_steps` steps
        load the files; the spatial steps are invertible (``Invertd``).

    Raises:
        MedsegError: when ``settings`` is incomplete (e.g. CT statistics or the median spacing missing).

    Example:
        >>> pipeline = build_preprocessing(make_settings(["MRI"]), with_label=False)
        >>> data = pipeline({"image": "imagesTr/case_001.nii.gz"})  # doctest: +SKIP
    """
    validate_settings(settings)
    keys = _keys(with_label)
    reader = READER_CLASSES[settings["reader"]]
    steps = [LoadImaged(key, reader=reader, image_only=True) for key in keys]
    steps.append(EnsureChannelFirstd(keys))
    steps.append(Orientationd(keys, axcodes=settings["axcodes"], labels=ORIENTATION_LABELS))
    if settings["spacing"] is not None:
        modes = ["bilinear", "nearest"][: len(keys)]
        steps.append(Spacingd(keys, pixdim=settings["spacing"], mode=modes, dtype=np.float32))
    if settings["crop_foreground"]:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=nonzero, allow_smaller=True))
    steps.append(intensity_transform(settings["normalization"]))
    steps.append(CastToTyped(keys, dtype=[np.float32, np.uint8][: len(keys)]))
    return Compose(steps)


def validate_settings(settings: dict) -> None:
    """Refuse settings that lack a key or a statistic (:class:`MedsegError` naming what is missing)."""
    required = ("reader", "axcodes", "spacing_rule", "spacing", "crop_foreground", "modalities", "normalization")
    missing = [k for k in required if k not in settings]
    if missing:
        raise MedsegError(f"preprocessing settings: missing key(s) {', '.join(missing)}; re-run `medseg-mem prepare`")
    if settings["reader"] not in READER_CLASSES:
        raise MedsegError(f"preprocessing settings: reader must be one of nibabel, itk; got {settings['reader']!r}")
    if settings["spacing_rule"] == "median" and settings["spacing"] is None:
        raise MedsegError("preprocessing settings: the median spacing has not been computed yet")
    for index, norm in enumerate(settings["normalization"]):
        if norm.get("scheme") == "ct" and any(norm.get(k) is None for k in ("lower", "upper", "mean", "std")):
            raise MedsegError(f"preprocessing settings: channel {index} is CT but its dataset statistics are missing")


def intensity_transform(normalization: List[dict]):
    """The MONAI transform applying the per-channel normalisation rules to ``"image"``, in place and a slab of
    slices at a time (:mod:`medseg_mem.data.normalize`)."""
    schemes = {n["scheme"] for n in normalization}
    if schemes == {"zscore_nonzero"}:
        return LeanNormalizeIntensityd("image", nonzero=True, channel_wise=True)
    return PerChannelIntensityd("image", normalization)


def ct_range(norm: dict) -> Dict[str, float]:
    """Arguments of ``ScaleIntensityRange`` equivalent to clip to [lower, upper] then (x - mean) / std."""
    lower, upper, mean, std = (float(norm[k]) for k in ("lower", "upper", "mean", "std"))
    return {"a_min": lower, "a_max": upper, "b_min": (lower - mean) / std, "b_max": (upper - mean) / std}


def normalize_channel_(channel, norm: dict):
    """Normalise one float32 channel ``(X, Y, Z)`` in place by its rule (:func:`scale_ct_`, or z-scored over its
    nonzero voxels: :func:`~medseg_mem.data.normalize.normalize_nonzero_`); return it."""
    return scale_ct_(channel, norm) if norm["scheme"] == "ct" else normalize_nonzero_(channel)


def scale_ct_(channel, norm: dict):
    """Clip and z-score a float32 CT channel in place with the dataset's statistics; return it.

    MONAI's ``ScaleIntensityRange(clip=True)`` (:func:`ct_range`) applied to one slab view at a time and written
    back: it is elementwise, so the values are the whole-image transform's bit for bit, without its full-size
    copies (13 bytes per voxel of a whole scan).
    """
    scale = ScaleIntensityRange(clip=True, **ct_range(norm))
    for view in slab_views(channel):
        view.copy_(scale(view))
    return channel


class PerChannelIntensityd(MapTransform):
    """Normalise each channel of a channel-first float32 image by its own rule (:func:`normalize_channel_`), in
    place: MONAI has no per-channel dispatch of intensity transforms, and its CT range transform copies the whole
    image several times over.

    Args:
        keys: the key(s) holding a channel-first image.
        normalization: the settings' ``"normalization"`` list, one rule per channel.
    """

    def __init__(self, keys, normalization: Sequence[dict]) -> None:
        super().__init__(keys)
        self.normalization = [dict(n) for n in normalization]

    def __call__(self, data):
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key] if out[key].dtype == torch.float32 else out[key].float()
            plain = image.as_tensor() if hasattr(image, "as_tensor") else image  # same storage, no metadata
            for channel, norm in enumerate(self.normalization):
                normalize_channel_(plain[channel], norm)
            out[key] = image
        return out
