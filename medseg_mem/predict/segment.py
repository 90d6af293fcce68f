"""``medseg-mem predict``: segment new scans with a trained run and write label maps in each scan's own grid.

Per scan: load it with the run's MONAI pipeline (:func:`~medseg_mem.data.transforms.build_preprocessing`, the
very transforms ``prepare`` applied at training time: RAS orientation, optional resampling and cropping,
normalisation), check its channels against the run's modalities, segment it with the whole variant under
:func:`torch.inference_mode` into a uint8 label map on the CPU (a variant that only ever reads slabs of the
image reads them from a temporary file, :class:`~medseg_mem.predict.files.SpilledImage`, so the image is not
resident beside the network's activations), map it back onto the input grid with MONAI
``Invertd`` (orientation and crop undone, nearest neighbour; :mod:`~medseg_mem.predict.restore`) and write
``<name>_seg.nii.gz`` (uint8, the input's shape and header). A run that resampled its scans inverts the class
probabilities instead (trilinear, then argmax), as before, so its files do not change. A scan that cannot be
read or does not fit the run is reported by name and skipped; the others are still written. Out of core
(``out_of_core``: ``always``, or ``auto`` when only that plan fits the budget) a ``patch`` or ``cascade`` run reads,
segments and writes each scan a chunk of slices at a time instead (:mod:`~medseg_mem.predict.streamed`), to the
same label map.

Example:
    >>> summary = predict(Path("medseg-work/runs/<run id>"), [Path("scans/")], Path("predictions"))  # doctest: +SKIP
    >>> print(summary.line())  # doctest: +SKIP
    predicted 10 of 10 scan(s) with patch (run ...) on cpu into predictions, 3.2 s
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from medseg_mem.core.config import InferenceConfig
from medseg_mem.data.transforms import build_preprocessing
from medseg_mem.core.errors import MedsegError
from medseg_mem.inference.mirror import unmirrored_note
from medseg_mem.predict.scan import metadata_only, preprocess_scan
from medseg_mem.variants.exported_run import open_any_run
from medseg_mem.variants.trained_run import TrainedRun
from medseg_mem.predict.files import SpilledImage, collect_inputs, plan_outputs, write_label_map
from medseg_mem.predict.overlay import check_overlays, draw_scan_overlay, overlay_path
from medseg_mem.predict.restore import resamples, restore_grid, restore_labels
from medseg_mem.predict.streamed import check_out_of_core, stream_segment, streamable
from medseg_mem.core.device import resolve_device
from medseg_mem.memory.measure import InProcessPeak
from medseg_mem.core.units import format_bytes
from medseg_mem.variants import TrainedVariant, get_variant
from medseg_mem.core.files.output_lock import output_lock
from medseg_mem.core.files.writable import check_output_folder


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict` did.

    Args:
        written: the label maps written, in input order.
        failed: ``(scan, reason)`` for every scan that could not be segmented.
        checkpoint: the ``--checkpoint`` used.
        variant: the run's variant.
        device: where the networks ran.
        out_dir: the output folder.
        seconds: wall time of the whole call.
        peak_bytes: what the largest inference added to the process (weights and input included).
        memory_method: how ``peak_bytes`` was measured (:class:`~medseg_mem.memory.measure.InProcessPeak`).
        inference: the settings the scans were segmented with.
        process_bytes: the whole process's peak (CPU: the most resident memory it held, reading and writing the
            scans included: what ``top`` shows; CUDA: the most memory the allocator reserved on the device).
        planned_bytes: the planner's figure for ``process_bytes`` (0: not planned).
    """

    written: Tuple[Path, ...]
    failed: Tuple[Tuple[Path, str], ...]
    checkpoint: Path
    variant: str
    device: str
    out_dir: Path
    seconds: float
    peak_bytes: int = 0
    memory_method: str = ""
    inference: InferenceConfig = InferenceConfig()
    process_bytes: int = 0
    planned_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when every scan was written."""
        return not self.failed

    def line(self) -> str:
        """One human-readable summary line."""
        total = len(self.written) + len(self.failed)
        memory = ""
        if self.process_bytes:
            planned = f", planned {format_bytes(self.planned_bytes)}" if self.planned_bytes else ""
            memory = (f"; peak resident memory of the process {format_bytes(self.process_bytes)}{planned} (the "
                      f"inference added {format_bytes(self.peak_bytes)})")  # fmt: skip
        return (
            f"predicted {len(self.written)} of {total} scan(s) with {self.variant} ({self.checkpoint}) on "
            f"{self.device} ({self.inference.describe()}) into {self.out_dir}, {self.seconds:.1f} s{memory}"
        )


class Segmenter:
    """A trained run ready to segment scans: its :class:`~medseg_mem.variants.trained.TrainedVariant` (``run``:
    networks on ``device``, label maps kept on the CPU) and the run's preprocessing pipeline.

    Args:
        trained: the run, from :func:`~medseg_mem.variants.trained_run.open_trained_run`.
        device: where the networks run.
        inference: slab batch, overlap and precision (default :class:`~medseg_mem.core.config.InferenceConfig`).
        engine: ``"torch"``, or ``"onnxruntime"``: the run's ONNX models in ONNX Runtime sessions
            (:func:`~medseg_mem.export.onnx_engine.onnx_variant`; CPU, fp32), called by the variant like the networks.

    Raises:
        MedsegError: ``engine`` is onnxruntime and onnxruntime is not installed, or a model cannot be loaded.

    Example:
        >>> segmenter = Segmenter(open_trained_run(Path("runs/<id>")), torch.device("cpu"))  # doctest: +SKIP
        >>> labels = segmenter(Path("scan.nii.gz"))  # uint8, the scan's spatial shape  # doctest: +SKIP
    """

    def __init__(
        self, trained: TrainedRun, device: torch.device, inference: InferenceConfig = None, engine: str = "torch"
    ) -> None:
        self.trained = trained
        self.device = device
        self.inference = inference or InferenceConfig()
        self.engine = engine
        if engine == "onnxruntime":
            from medseg_mem.export.onnx_engine import onnx_variant

            self.run = onnx_variant(trained, self.inference, labels_device="cpu")
        else:
            self.run = TrainedVariant.load(trained, device, self.inference, labels_device="cpu")
        self.pipeline = build_preprocessing(trained.preprocessing, with_label=False)
        self.peak = (0, "")  # the largest inference peak so far, and how it was measured
        self.device_peak = 0  # CUDA: the most memory reserved at an inference's peak

    def __call__(self, scan: Path) -> np.ndarray:
        """Labels of ``scan`` in its own voxel grid (file order), uint8.

        Raises:
            MedsegError: the scan cannot be read, does not match the run, or is too large for the device.
        """
        data = self.preprocess(scan)
        if resamples(self.trained.preprocessing):
            probabilities = self.probabilities(data["image"], scan)
            data["image"] = metadata_only(data["image"])  # Invertd reads its trace only: the image is freed
            return restore_grid(self.pipeline, data, probabilities, scan)
        if self.run.variant.reads_slabs_only():
            return restore_labels(self.pipeline, data, self.spilled_labels(data, scan), scan)
        return restore_labels(self.pipeline, data, self.labels(data["image"], scan), scan)

    def preprocess(self, scan: Path) -> dict:
        """Load, check and preprocess ``scan`` whole (:func:`~medseg_mem.predict.scan.preprocess_scan`)."""
        return preprocess_scan(self.pipeline, self.trained.preprocessing["reader"], scan, self.trained.modalities)

    def spilled_labels(self, data: dict, scan: Path) -> torch.Tensor:
        """:meth:`labels` of ``data["image"]`` read back slab by slab from a temporary file; ``data["image"]``
        keeps only its metadata (all that inverting the pipeline needs), so the image's memory is freed."""
        with SpilledImage(data["image"], self.device) as image:
            data["image"] = metadata_only(data["image"])
            return self.labels(image, scan)

    def labels(self, image: torch.Tensor | SpilledImage, scan: Path) -> torch.Tensor:
        """Label map ``(1, X, Y, Z)`` (uint8) of the preprocessed image, made straight into CPU memory."""
        with self._out_of_memory(scan), torch.inference_mode():
            batch = image if isinstance(image, SpilledImage) else image.as_tensor()[None].float().to(self.device)
            with self._measured(0 if isinstance(batch, SpilledImage) else tensor_bytes(batch)):
                out = self.run.segment(batch)[0]
        return out.clone()  # a normal tensor again (not an inference tensor) for MONAI's inverse transforms

    @contextlib.contextmanager
    def _measured(self, input_bytes: int) -> Iterator[None]:
        """Measure the block's peak (weights and ``input_bytes`` included) into :attr:`peak` if it is the largest."""
        weights = sum(map(network_bytes, self.run.nets.values()))
        with InProcessPeak(self.device.type, weights + input_bytes) as peak:
            yield
        self.peak = max(self.peak, (peak.peak_bytes, peak.method))
        self.device_peak = max(self.device_peak, peak.process_bytes)

    @contextlib.contextmanager
    def measured_stream(self, scan: Path) -> Iterator[None]:
        """The block segments ``scan`` out of core (:mod:`~medseg_mem.predict.streamed`): its peak measured as
        :meth:`labels`' (weights included; the image is never whole), a CUDA out-of-memory error in one line."""
        with self._out_of_memory(scan), self._measured(0):
            yield

    def probabilities(self, image: torch.Tensor, scan: Path) -> torch.Tensor:
        """Class probabilities ``(K, X, Y, Z)`` of the preprocessed image, on the CPU (resampled runs)."""
        with self._out_of_memory(scan), torch.inference_mode():
            batch = image.as_tensor()[None].float().to(self.device)
            with self._measured(tensor_bytes(batch)):  # as labels(): what the inference adds is reported
                out = self.run.probabilities(batch)
                out = out[0].float().cpu()
        return out.clone()

    @contextlib.contextmanager
    def _out_of_memory(self, scan: Path) -> Iterator[None]:
        """Turn a CUDA out-of-memory error into a one-line :class:`MedsegError` naming the scan."""
        try:
            yield
        except torch.cuda.OutOfMemoryError as error:
            raise MedsegError(
                f"{scan}: out of memory on {self.device} ({self.trained.variant}); try --device cpu, or "
                "`medseg-mem plan` for a variant that fits"
            ) from error


def predict(
    checkpoint: Path,
    inputs: Sequence[Path],
    out_dir: Path,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    inference: InferenceConfig = None,
    engine: str = "torch",
    warn: Callable[[str], None] = None,
    overlay: bool = False,
    budget_bytes: Optional[int] = None,
    memory_check: bool = True,
    out_of_core: str = "auto",
) -> PredictSummary:
    """Segment every scan in ``inputs`` with the trained run at ``checkpoint``; write one label map per scan.

    Args:
        checkpoint: a run folder (``medseg-work/runs/<run id>``) or any ``.pt`` in it, an exported bundle folder
            or an ONNX export folder (:mod:`~medseg_mem.variants.exported_run`; their digests are checked).
        inputs: NIfTI files (3D, or 4D with channels last) and folders of them.
        out_dir: where ``<name>_seg.nii.gz`` files go (created when missing).
        overwrite: replace existing output files instead of refusing.
        device: ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
        progress: show a progress bar over the scans on stderr.
        inference: slab batch, overlap and precision (default :class:`~medseg_mem.core.config.InferenceConfig`).
        engine: ``"torch"`` (default) or ``"onnxruntime"``: the run's ONNX export (``<run folder>/onnx``, from
            ``medseg-mem export --format onnx``; made in a temporary folder when it is missing or was made from
            other weights) in ONNX Runtime on the CPU, fp32 (:mod:`medseg_mem.export.onnx_engine`).
        warn: receives a note when ``--tta`` mirrors a network trained without mirroring, when label maps an
            earlier predict wrote into an input folder are left out, and the planner's calibration lines (default:
            stderr).
        overlay: also draw ``<name>_overlay.png`` beside each label map (:mod:`~medseg_mem.predict.overlay`).
        budget_bytes: the memory the prediction must fit (``None``: the device's free memory less 10 %); its
            plan is checked before the networks load (:mod:`~medseg_mem.predict.guard`; torch engine only).
        memory_check: refuse a plan over the budget (``False``: say so and predict anyway).
        out_of_core: ``auto`` (read, segment and write each scan by chunks when the in-memory plan is over the budget
            and the out-of-core one fits), ``always`` or ``never`` (:mod:`~medseg_mem.predict.streamed`; ``patch``
            and ``cascade`` runs with ``overlap`` 0 on the torch engine; ``full`` is always in memory).

    Returns:
        a :class:`PredictSummary`; scans that failed are listed in ``failed`` with the reason, the others
        are written all the same.

    Raises:
        MedsegError: a bad checkpoint, no usable input, outputs that exist (without ``overwrite``), an
            ``out_dir`` that cannot be written or that another predict is writing, an unusable device,
            onnxruntime without its packages, on cuda or at a precision other than fp32, or a plan over the budget;
            nothing is written then. OptionError: ``out_of_core`` unknown, or ``always`` where the run cannot stream.
    """
    from medseg_mem.memory.check import calibrated
    from medseg_mem.memory.rss import pin_glibc_allocator, process_peak

    pin_glibc_allocator()  # freed tensors go back to the system: a scan's peak does not add up
    from medseg_mem.export.onnx_engine import check_engine

    start = time.perf_counter()
    trained = open_any_run(Path(checkpoint))
    warn = warn or (lambda line: print(line, file=sys.stderr))
    if trained.onnx_dir is not None and engine != "onnxruntime":
        warn(f"note: {checkpoint} is an ONNX export: it runs on ONNX Runtime (--engine onnxruntime)")
        engine = "onnxruntime"
    engine_device = check_engine(engine, device, (inference or InferenceConfig()).precision)
    settings = inference or InferenceConfig()
    check_out_of_core(out_of_core, get_variant(trained.variant), settings, engine)
    out_of_core = out_of_core if streamable(get_variant(trained.variant), settings, engine) else "never"
    note = unmirrored_note(trained.augment, (inference or InferenceConfig()).mirror_axes)
    if note:
        warn(note)
    skipped: List[Path] = []
    jobs = plan_outputs(collect_inputs([Path(p) for p in inputs], skipped), Path(out_dir), overwrite)
    if skipped:
        warn(f"note: left out {len(skipped)} label map(s) an earlier predict wrote into the input folder(s) "
             f"({', '.join(p.name for p in skipped[:3])}{', ...' if len(skipped) > 3 else ''}): outputs, not scans")
    if overlay:
        check_overlays(jobs, overwrite)
    check_output_folder(Path(out_dir), "--out")  # before any scan is segmented
    with output_lock(Path(out_dir), "--out", "predict", inside=True):  # a second predict into --out stops here
        torch_device = resolve_device(engine_device)
        plan = None
        if engine == "torch":
            from medseg_mem.predict.guard import check_memory

            plan = check_memory(trained, [scan for scan, _ in jobs], torch_device.type, settings, budget_bytes,
                                warn, refuse=memory_check, out_of_core=out_of_core)  # fmt: skip
        streaming = out_of_core == "always" or (out_of_core == "auto" and plan is not None and plan.out_of_core)
        segmenter = Segmenter(trained, torch_device, inference, engine)
        written, failed = _segment_all(segmenter, jobs, progress, overlay, streaming)
    where = str(torch_device) + (" via onnxruntime" if engine == "onnxruntime" else "")
    process = segmenter.device_peak if torch_device.type == "cuda" else process_peak()
    planned = plan.process_bytes if plan is not None and calibrated(plan) else 0
    return PredictSummary(
        tuple(written), tuple(failed), Path(checkpoint), trained.variant, where, Path(out_dir),
        time.perf_counter() - start, *segmenter.peak, segmenter.inference, process, planned,
    )  # fmt: skip


def _segment_all(segmenter: Segmenter, jobs, progress: bool, overlay: bool = False, streaming: bool = False):
    from tqdm.auto import tqdm

    written: List[Path] = []
    failed: List[Tuple[Path, str]] = []
    trained = segmenter.trained
    for scan, target in tqdm(jobs, desc="predict", unit="scan", file=sys.stderr, disable=not progress):
        try:
            if streaming:
                written.append(stream_segment(segmenter, scan, target))
                labels = written_labels(target) if overlay else None
            else:
                labels = segmenter(scan)
                written.append(write_label_map(labels, scan, target, trained.num_classes))
            if overlay:
                draw_scan_overlay(scan, labels, overlay_path(target.parent, scan), trained.class_names,
                                  f"{target.name} over {scan.name} ({trained.variant})")  # fmt: skip
        except MedsegError as error:
            failed.append((scan, str(error)))
    return written, failed


def written_labels(target: Path) -> np.ndarray:
    """The labels of a label map written out of core, read back whole (for ``--overlay`` only)."""
    import nibabel as nib

    return np.asanyarray(nib.load(str(target)).dataobj)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor``'s elements."""
    return tensor.numel() * tensor.element_size()


def network_bytes(net) -> int:
    """Weights and buffers of a PyTorch network; an ONNX Runtime stage's ``weight_bytes`` (its model file)."""
    if isinstance(net, torch.nn.Module):
        return sum(tensor_bytes(t) for t in (*net.parameters(), *net.buffers()))
    return int(getattr(net, "weight_bytes", 0))
