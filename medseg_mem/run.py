"""``medseg-mem run``: train every stage of each chosen variant, evaluate on the test split, append to the CSV.

Flow per variant: build each stage's training/validation pairs from the prepared cases, train the stage
(best checkpoint kept on validation Dice), evaluate the whole variant with the best checkpoints on the test
split (per-class Dice on the reconstructed full volume, seconds per case), measure peak inference memory
(:func:`medseg_mem.memory.measure.measure_peak`), and append one row per foreground class to the results CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from medseg_mem import __version__
from medseg_mem.checkpoint import load_checkpoint
from medseg_mem.config import ModelConfig, RunRequest, TrainConfig
from medseg_mem.data.prepared import PreparedDataset
from medseg_mem.errors import MedsegError
from medseg_mem.evaluate import Evaluation, evaluate_variant
from medseg_mem.memory.measure import MemoryReading, measure_peak
from medseg_mem.results import append_rows, new_run_id, read_results, utc_timestamp
from medseg_mem.run_settings import load_run_record, resolve_settings, write_run_record
from medseg_mem.train import StageJob, build_network, train_stage
from medseg_mem.variants import get_variant, resolve_variants

Tensors = List[Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class VariantResult:
    run_id: str
    variant: str
    evaluation: Evaluation
    memory: MemoryReading
    train_steps: int
    train_seconds: float


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MedsegError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)


def load_split(dataset: PreparedDataset, split: str) -> Tensors:
    """Batched ``(image (1,C,X,Y,Z) float, label (1,1,X,Y,Z) long)`` tensors of every case in ``split``."""
    cases = []
    for case_id in dataset.ids(split):
        case = dataset.load(case_id)
        cases.append((torch.from_numpy(case.image).float()[None], torch.from_numpy(case.label).long()[None]))
    if not cases:
        raise MedsegError(f"{dataset.root}: the {split} split is empty; prepare a dataset with more cases")
    return cases


def stage_pairs(stage, cases: Tensors, model: ModelConfig, num_classes: int):
    """Unbatched ``(x, y)`` pairs a stage trains or validates on."""
    pairs = []
    for image, label in cases:
        x, y = stage.inputs(image, label, model, num_classes)
        pairs.append((x[0], y[0]))
    return pairs


def train_variant(name, run_dir, dataset, splits, model, train, device, progress) -> Tuple[Dict[str, Path], int, float]:
    """Train each stage of variant ``name``; return best checkpoint paths, total steps, total seconds."""
    variant, num_classes = get_variant(name), dataset.num_classes
    best, steps, seconds = {}, 0, 0.0
    for index, stage in enumerate(variant.stages()):
        job = StageJob(
            variant=name,
            stage=stage,
            in_channels=stage.in_channels(dataset.in_channels, num_classes, model),
            num_classes=num_classes,
            model=model,
            train=train,
            train_pairs=stage_pairs(stage, splits["train"], model, num_classes),
            val_pairs=stage_pairs(stage, splits["val"], model, num_classes),
            folder=run_dir / stage.name,
            device=device,
            meta=checkpoint_meta(dataset),
            seed_offset=index,
        )
        outcome = train_stage(job, progress=progress)
        best[stage.name], steps, seconds = outcome.best_path, steps + outcome.steps, seconds + outcome.seconds
    return best, steps, seconds


def checkpoint_meta(dataset: PreparedDataset) -> dict:
    """What predict needs to preprocess new scans and name the classes (stored in every checkpoint)."""
    manifest = dataset.manifest
    return {
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "modalities": list(dataset.modalities),
        "preprocessing": manifest.get("settings", manifest.get("preprocessing", {})),
        "package_version": __version__,
    }


def load_networks(paths: Dict[str, Path], device: torch.device) -> Dict[str, torch.nn.Module]:
    """Rebuild each stage's U-Net from its checkpoint (validated, ``weights_only``)."""
    nets = {}
    for stage, path in paths.items():
        saved = load_checkpoint(path, map_location=device)
        spec = saved["model"]
        net = build_network(spec["in_channels"], spec["num_classes"], ModelConfig(channels=tuple(spec["channels"])))
        net.load_state_dict(saved["state_dict"])
        nets[stage] = net.to(device).eval()
    return nets


def memory_setup(variant_name: str, paths: Dict[str, str], image, model: ModelConfig, num_classes: int, device: str):
    """Top-level (picklable) setup for :func:`measure_peak`: load the variant, return its inference call."""
    torch_device = torch.device(device)
    nets = load_networks({k: Path(v) for k, v in paths.items()}, torch_device)
    variant, image = get_variant(variant_name), torch.as_tensor(image).to(torch_device)

    def infer():
        with torch.inference_mode():
            return variant.segment(nets, image, model, num_classes).argmax(dim=1)

    return infer


def measure_variant_memory(name, paths, cases: Tensors, model, num_classes, device) -> MemoryReading:
    """Peak inference memory of the whole variant on the largest test case."""
    image = max((image for image, _ in cases), key=lambda t: t.numel())
    args = (name, {k: str(v) for k, v in paths.items()}, image.numpy(), model, num_classes, device.type)
    return measure_peak(memory_setup, args, device.type)


def result_rows(result: VariantResult, dataset, model: ModelConfig, train: TrainConfig, device) -> List[dict]:
    """One tidy row per foreground class, run-level columns repeated."""
    run = {
        "run_id": result.run_id, "timestamp": utc_timestamp(), "dataset": dataset.name, "variant": result.variant,
        "peak_memory_bytes": result.memory.peak_bytes, "memory_method": result.memory.method,
        "device": str(device), "inference_seconds_per_case": result.evaluation.seconds_per_case,
        "train_steps": result.train_steps, "train_seconds": round(result.train_seconds, 2), "seed": train.seed,
        "channels": "-".join(map(str, model.channels)), "loss": train.loss + ("+batch" if train.batch_dice else ""),
        "slab_size": model.slab_size if result.variant != "full" else "",
        "downsample": model.downsample if result.variant == "cascade" else "",
        "n_test_cases": result.evaluation.n_cases, "package_version": __version__, "source": "run",
    }  # fmt: skip
    names = dataset.class_names[1:]
    return [
        {**run, "class_name": names[i], "class_index": i + 1, "dice": round(d, 6)}
        for i, d in enumerate(result.evaluation.dice)
    ]


def run_variants(request: RunRequest, echo: Callable[[str], None] = print) -> List[VariantResult]:
    """Train, select, evaluate and record each requested variant (see the module docstring).

    Raises:
        MedsegError: missing/malformed prepared data or results CSV, unknown variant, unusable device.
    """
    if request.results.exists():
        read_results(request.results)  # refuse a malformed CSV before hours of training, not after
    dataset = PreparedDataset.open(request.data_dir)
    jobs = planned_runs(request, dataset)
    device = resolve_device(jobs[0][2].device)
    splits = {split: load_split(dataset, split) for split in ("train", "val", "test")}
    echo(f"{dataset.name}: {', '.join(f'{s} {len(c)}' for s, c in splits.items())} cases; device {device}")
    results = [run_one(run_id, name, model, train, dataset, splits, request, device, echo)
               for run_id, name, train, model in jobs]  # fmt: skip
    from medseg_mem.report import format_table

    echo(format_table(read_results(request.results).query("dataset == @dataset.name")))
    return results


def planned_runs(request: RunRequest, dataset: PreparedDataset):
    """(run id, variant, train config, model config) for each run: new ones, or the one being resumed."""
    if request.resume:
        record = load_run_record(request.runs_dir / request.resume)
        return [(request.resume, record["variant"], record["train"], record["model"])]
    model, train = resolve_settings(request, dataset)
    return [(new_run_id(name), name, train, model) for name in resolve_variants(list(request.variants))]


def run_one(run_id, name, model, train, dataset, splits, request, device, echo) -> VariantResult:
    run_dir = request.runs_dir / run_id
    write_run_record(run_dir, {"run_id": run_id, "variant": name, "data_dir": str(request.data_dir)}, model, train)
    echo(f"[{name}] run {run_id}: channels {'-'.join(map(str, model.channels))}, {train.steps} steps/stage, "
         f"loss {train.loss}")  # fmt: skip
    paths, steps, seconds = train_variant(name, run_dir, dataset, splits, model, train, device, request.progress)
    nets = load_networks(paths, device)
    evaluation = evaluate_variant(get_variant(name), nets, splits["test"], model, dataset.num_classes, device)
    memory = measure_variant_memory(name, paths, splits["test"], model, dataset.num_classes, device)
    result = VariantResult(run_id, name, evaluation, memory, steps, seconds)
    append_rows(request.results, result_rows(result, dataset, model, train, device))
    dice = ", ".join(f"{n} {d:.3f}" for n, d in zip(dataset.class_names[1:], evaluation.dice))
    echo(f"[{name}] test Dice {dice}; peak memory {memory.peak_bytes / 2**20:.1f} MiB ({memory.method}); "
         f"{evaluation.seconds_per_case:.3f} s/case")  # fmt: skip
    return result
