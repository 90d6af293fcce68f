"""What the MONAI bundles in ``bundles/{full,patch,cascade}`` call through ``_target_``: train, then infer.

``configs/train.json`` calls :func:`train`: prepare the embedded default task when the prepared folder is
missing, train the bundle's variant with :func:`medseg_mem.runner.run.run_variants` (so the run also lands in the
results CSV), then copy the run's ``run.json`` and every stage's ``best.pt`` to ``model_dir``.
``configs/inference.json`` calls :func:`infer`: :func:`medseg_mem.predict.predict` with ``model_dir`` on the
prepared dataset's test images (or every NIfTI in ``input_dir``). Every path defaults to ``work_dir``
(``$MEDSEG_MEM_HOME``, else ``./medseg-work``), so a bundle run needs no network and no other configuration. A
bundle a run was exported into (``medseg-mem export --format bundle``) segments with its own ``models/`` instead:
it runs anywhere, with no work folder, e.g. ``python -m monai.bundle run --config_file <bundle>/configs/
inference.json --bundle_root <bundle> --input_dir scans --output_dir out``.

Example:
    >>> from monai.bundle import run
    >>> run(config_file="bundles/patch/configs/train.json", steps=20)  # doctest: +SKIP
    >>> run(config_file="bundles/patch/configs/inference.json")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from medseg_mem.core.errors import MedsegError
from medseg_mem.core.config import parse_widths
from medseg_mem.variants import get_variant

logger = logging.getLogger(__name__)
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def train(
    variant: str,
    work_dir: Optional[Union[str, Path]] = None,
    data_dir: Optional[Union[str, Path]] = None,
    model_dir: Optional[Union[str, Path]] = None,
    task_dir: Optional[Union[str, Path]] = None,
    steps: Optional[int] = None,
    val_every: Optional[int] = None,
    batch_size: Optional[int] = None,
    channels: Optional[Union[str, Sequence[int]]] = None,
    seed: Optional[int] = None,
    device: str = "auto",
    progress: Union[bool, str] = True,
) -> Path:
    """Prepare if needed, train ``variant``, evaluate it and publish its best checkpoints to ``model_dir``.

    Args:
        variant: ``full``, ``patch`` or ``cascade``.
        work_dir: the medseg-mem work folder; ``prepared/``, ``runs/``, ``results.csv`` live in it (default:
            :func:`work_folder`).
        data_dir: the prepared dataset (default ``<work_dir>/prepared``), prepared when missing.
        model_dir: where the trained run is published (default ``<work_dir>/models/<variant>``).
        task_dir: an MSD task folder to prepare when ``data_dir`` is missing; ``None`` = the embedded default.
        steps, val_every, batch_size, channels, seed: training settings; ``None`` keeps the dataset's profile.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show progress bars.

    Returns:
        ``model_dir``, holding ``run.json`` and ``<stage>/best.pt`` (a run folder ``predict`` accepts).

    Raises:
        MedsegError: bad settings, an unusable task folder, or a ``model_dir`` holding something else.

    Example:
        >>> train("patch", work_dir="scratch", steps=20, channels="4,8")  # doctest: +SKIP
        PosixPath('scratch/models/patch')
    """
    from medseg_mem.core.changes import RunChanges
    from medseg_mem.core.config import RunRequest
    from medseg_mem.runner.run import run_variants

    work_dir = Path(work_dir) if work_dir else Path(work_folder())
    data_dir = Path(data_dir) if data_dir else work_dir / "prepared"
    model_dir = Path(model_dir) if model_dir else work_dir / "models" / variant
    show = as_bool(progress, "progress")
    with _logged():
        ensure_prepared(data_dir, task_dir, show)
        widths = as_widths(channels) if channels is not None else None
        changes = RunChanges.of(steps=steps, val_every=val_every, batch_size=batch_size, seed=seed, device=device,
                                channels=widths)  # fmt: skip
        request = RunRequest((variant,), data_dir, work_dir / "results.csv", work_dir / "runs", None, changes, show)
        (result,) = run_variants(request, echo=logger.info)
        publish_run(work_dir / "runs" / result.run_id, model_dir, variant)
    logger.info("published run %s to %s; next: configs/inference.json", result.run_id, model_dir)
    return model_dir


def infer(
    variant: str,
    model_dir: Union[str, Path],
    output_dir: Union[str, Path],
    data_dir: Optional[Union[str, Path]] = None,
    input_dir: Optional[Union[str, Path]] = None,
    overwrite: Union[bool, str] = True,
    device: str = "auto",
    progress: Union[bool, str] = True,
    bundle_root: Optional[Union[str, Path]] = None,
):
    """Segment the prepared dataset's test images (or ``input_dir``) with the bundle's exported ``models/`` when
    ``bundle_root`` holds them, else with the run published in ``model_dir``.

    Args:
        variant: the bundle's variant (names the train config in the "train first" error).
        model_dir: the run folder :func:`train` published.
        output_dir: where ``<name>_seg.nii.gz`` label maps are written.
        data_dir: a prepared dataset whose test split is segmented when ``input_dir`` is ``None``.
        input_dir: a folder of NIfTI scans to segment instead.
        overwrite: replace label maps from an earlier run.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar.
        bundle_root: the bundle folder; its ``models/`` are used when a run was exported into it.

    Returns:
        the :class:`~medseg_mem.predict.PredictSummary`.

    Raises:
        MedsegError: no trained run in ``model_dir`` ("run train.json first"), no inputs, images with another
            channel count than the model's (before any network is built), or a scan that failed.

    Example:
        >>> infer("patch", "scratch/models/patch", "scratch/out", data_dir="scratch/prepared")  # doctest: +SKIP
    """
    from medseg_mem.predict import predict

    with _logged():
        checkpoint = exported_bundle(bundle_root) or trained_model(Path(model_dir), variant)
        inputs = [Path(input_dir)] if input_dir else prepared_test_images(data_dir)
        check_channels(checkpoint, variant, inputs, None if input_dir else data_dir)
        summary = predict(checkpoint, inputs, Path(output_dir), as_bool(overwrite, "overwrite"), device,
                          as_bool(progress, "progress"))  # fmt: skip
        logger.info(summary.line())
        if not summary.ok:
            raise MedsegError(f"{len(summary.failed)} scan(s) failed:\n" + "\n".join(r for _, r in summary.failed))
    return summary


def require_trained(model_dir: Union[str, Path], variant: str, bundle_root: Optional[str] = None) -> Path:
    """``inference.json``'s ``initialize``: :func:`trained_model`, one line and exit status 1 from the command line.

    Args:
        model_dir: where :func:`train` published the run.
        variant: the bundle's variant.
        bundle_root: the config's ``bundle_root``; the message names the bundle actually run
            (:func:`bundle_run`).

    Raises:
        MedsegError: no trained run in ``model_dir`` (in-process); ``SystemExit`` with that line under
            ``python -m monai.bundle``.

    Example:
        >>> require_trained("medseg-work/models/patch", "patch")  # doctest: +SKIP
        PosixPath('medseg-work/models/patch')
    """
    with _logged():
        return exported_bundle(bundle_root) or trained_model(Path(model_dir), variant, bundle_run(variant, bundle_root))


def exported_bundle(bundle_root: Optional[Union[str, Path]]) -> Optional[Path]:
    """``bundle_root`` when a run was exported into it (``models/model.pt`` and ``medseg_mem`` in its metadata),
    else ``None``."""
    if not bundle_root:
        return None
    from medseg_mem.variants.exported_run import METADATA

    folder = Path(bundle_root)
    if not (folder / "models" / "model.pt").is_file():
        return None
    try:
        metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if isinstance(metadata, dict) and "medseg_mem" in metadata else None


def work_folder() -> str:
    """The configs' ``work_dir``: ``$MEDSEG_MEM_HOME``, else ``medseg-work``
    (:func:`~medseg_mem.core.locations.work_home`)."""
    from medseg_mem.core.locations import work_home

    return str(work_home())


def trained_model(model_dir: Path, variant: str, bundle: Optional[str] = None) -> Path:
    """``model_dir`` when it holds a published run, else the "run train.json first" error naming ``bundle`` (the
    bundle folder run; default ``bundles/<variant>``) and, when that bundle holds exported weights, what they are
    for."""
    if not (Path(model_dir) / "run.json").is_file():
        bundle = bundle or f"bundles/{variant}"
        exported = Path(bundle) / "models" / "model.pt"
        note = (f" ({exported} is an export for MONAI's tools such as ckpt_export; this config segments with the "
                "run in model_dir)") if exported.is_file() else ""  # fmt: skip
        raise MedsegError(
            f"model_dir {model_dir}: no trained {variant} checkpoint{note}; run train.json first: "
            f"python -m monai.bundle run --config_file {bundle}/configs/train.json"
        )
    return model_dir


def bundle_run(variant: str, bundle_root: Optional[str] = None) -> str:
    """The bundle folder being run: the one of ``--config_file`` on the ``python -m monai.bundle`` command line
    (a copied or exported bundle, whatever its ``bundle_root`` says), else ``bundle_root``, else
    ``bundles/<variant>``."""
    config = command_line_config()
    if config is not None:
        folder = Path(config).parent
        return str(folder.parent if folder.name == "configs" else folder)
    return str(bundle_root or f"bundles/{variant}")


def command_line_config() -> Optional[str]:
    """The single ``--config_file`` of the ``python -m monai.bundle`` command line, or ``None``."""
    if not on_bundle_command_line():
        return None
    args = sys.argv[1:]
    for index, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--config_file=") else (
            args[index + 1] if arg == "--config_file" and index + 1 < len(args) else None)  # fmt: skip
        if value is not None and value.endswith(".json"):
            return value
    return None


def check_channels(model_dir: Path, variant: str, inputs: Sequence[Path], data_dir=None) -> None:
    """The images have as many channels as the run in ``model_dir`` takes: ``data_dir``'s modalities when given,
    else every scan's NIfTI header (no voxel is read, no network built).

    Raises:
        MedsegError: one line naming ``data_dir`` (or the first scan that differs), the channels found, the
            channels the model expects and how to get a model for them.

    Example:
        >>> check_channels(Path("medseg-work/models/patch"), "patch", [Path("scans")])  # doctest: +SKIP
        MedsegError: scans/a.nii.gz: has 2 channel(s), the patch model in medseg-work/models/patch expects 1 (MRI); ...
    """
    from medseg_mem.data.prepared import PreparedDataset
    from medseg_mem.predict.files import collect_inputs
    from medseg_mem.predict.scan import channel_mismatch, header_channels
    from medseg_mem.variants.exported_run import open_any_run

    modalities = open_any_run(Path(model_dir)).modalities
    expecter = f"the {variant} model in {model_dir}"
    retrain = f"python -m monai.bundle run --config_file {bundle_run(variant)}/configs/train.json"
    if data_dir:
        found = len(PreparedDataset.open(Path(data_dir)).modalities)
        if found != len(modalities):
            fix = f"use a bundle trained on this task, or retrain on it: {retrain} --data_dir {data_dir}"
            raise channel_mismatch(f"data_dir {data_dir}", found, modalities, expecter, fix)
        return
    counts = {scan: header_channels(scan) for scan in collect_inputs(inputs)}
    differ = [scan for scan, count in counts.items() if count and count != len(modalities)]
    if differ:
        raise channel_mismatch(str(differ[0]), counts[differ[0]], modalities, expecter,
                               f"{len(differ)} of {len(counts)} scan(s) differ; use a bundle trained on their task, "
                               f"or retrain on it: {retrain} --task_dir <its MSD task folder>")  # fmt: skip


def ensure_prepared(data_dir: Path, task_dir=None, progress: bool = True) -> Path:
    """Prepare ``task_dir`` (``None``: the embedded default) into ``data_dir`` unless it is prepared already."""
    from medseg_mem.core.prepare_config import PrepareConfig
    from medseg_mem.data.prepare import prepare

    if (Path(data_dir) / "manifest.json").is_file():
        return Path(data_dir)
    config = PrepareConfig(task_dir=Path(task_dir) if task_dir else None, out_dir=Path(data_dir))
    logger.info(prepare(config, progress=progress).line())
    return Path(data_dir)


def prepared_test_images(data_dir) -> List[Path]:
    """The source NIfTI images of the test split of the prepared dataset at ``data_dir``.

    Raises:
        MedsegError: no ``data_dir``, not a prepared dataset, or test images no longer where prepare read them.
    """
    from medseg_mem.data.prepared import PreparedDataset

    if not data_dir:
        raise MedsegError("infer: give data_dir (a prepared dataset) or input_dir (a folder of scans)")
    dataset = PreparedDataset.open(Path(data_dir))
    test = set(dataset.ids("test"))
    source = Path(dataset.manifest["source"])
    images = [source / case["image"] for case in dataset.manifest["cases"] if case["id"] in test]
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise MedsegError(f"data_dir {data_dir}: test image(s) {', '.join(missing[:3])} are gone; pass input_dir")
    return images


def publish_run(run_dir: Path, model_dir: Path, variant: str) -> Path:
    """Copy ``run.json`` and every stage's ``best.pt`` of ``run_dir`` to ``model_dir``, replacing it atomically."""
    from medseg_mem.core.files.atomic import publish_folder, remove_path, staging_folder

    _check_replaceable(model_dir)
    staging = staging_folder(model_dir)
    try:
        shutil.copy2(run_dir / "run.json", staging / "run.json")
        for stage in get_variant(variant).stages():
            (staging / stage.name).mkdir()
            shutil.copy2(run_dir / stage.name / "best.pt", staging / stage.name / "best.pt")
        publish_folder(staging, model_dir)
    except BaseException:
        remove_path(staging)
        raise
    return model_dir


def _check_replaceable(model_dir: Path) -> None:
    occupied = model_dir.is_dir() and any(model_dir.iterdir()) and not (model_dir / "run.json").exists()
    if model_dir.is_file() or occupied:
        raise MedsegError(f"model_dir {model_dir}: holds something other than a trained run; choose another model_dir")


def as_bool(value: Union[bool, str, int], name: str) -> bool:
    """``True``/``False`` from a bool or a command-line word (``true``, ``false``, ``1``, ``0``, ``yes``, ``no``)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS + FALSE_WORDS:
        return word in TRUE_WORDS
    raise MedsegError(f"--{name} must be true or false; got {value!r}")


def as_widths(channels: Union[str, Sequence[int]]) -> tuple:
    """U-Net widths from ``"8,16,32"``, ``[8, 16, 32]`` or ``(8, 16, 32)``: ``run``'s ``--channels`` parser
    (:func:`~medseg_mem.core.config.parse_widths`)."""
    return parse_widths(channels)


def on_bundle_command_line() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (the command line, not a caller's own Python)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monai.bundle.__main__"


@contextlib.contextmanager
def _logged() -> Iterator[None]:
    """Turn a :class:`MedsegError` into one line.

    MONAI wraps any ``Exception`` a config expression raises into ``RuntimeError("Failed to evaluate ...")``,
    which ``python -m monai.bundle`` prints as a ~50-line traceback. ``SystemExit`` is not an ``Exception``:
    MONAI and ``fire`` let it through and Python prints only its message and exits with status 1. In-process
    (``monai.bundle.run(...)`` from Python) the error is logged and re-raised, so callers can catch it.
    """
    try:
        yield
    except MedsegError as error:
        if on_bundle_command_line():
            raise SystemExit(f"medseg-mem: {error}") from None
        logger.error("medseg-mem: %s", error)
        raise
