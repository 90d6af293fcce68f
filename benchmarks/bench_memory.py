"""Memory benchmark: peak memory and time of each variant's inference, against the planner's prediction.

Random-weight spec U-Nets (widths 32..512, depth 5; 4 classes for 4-channel inputs, 3 for 1-channel; channels-last
weights, as ``predict`` runs them) segment one random volume per case under ``torch.inference_mode()``, at
each ``--precisions`` (autocast of the network passes). Each (case, variant, precision) runs in its own measured process
(:func:`medseg_mem.memory.measure.measure_peak`), which also times ``--repeats`` runs and keeps the median.

The streamed slab inferer (``SlabInferer(output="labels")``: each slab's labels go straight into a uint8 map;
overlapping slabs are blended in a rolling buffer) is compared with MONAI's
``SlidingWindowInferer(roi_size=(-1, -1, 16))`` at the same overlap (Gaussian blending when above 0, as nnU-Net)
and precision, returning its float logits - MONAI's own output, before any argmax a user would add. A third row,
``slab-labels-spilled``, is ours as ``predict`` runs the ``patch`` variant: the image waits in a temporary file and
is read slab by slab (``SpilledImage``), so it is not resident; MONAI's inferer takes a tensor. Each runs in its
own measured process; their order alternates from one (overlap, precision) pair to the next, so load from other
jobs hits them alike. At a half precision the convolution weights are stored in it, as ``predict`` loads them.
Rows are written to a results CSV (schema of :mod:`medseg_mem.report.results`, Dice left empty) after every
measurement.

Usage:
    python benchmarks/bench_memory.py --device cpu --sizes small,brats --repeats 3
    python benchmarks/bench_memory.py --sizes brats --variants full --precisions fp32,bf16 \
        --compare brats,liver --liver-depth 500 --overlaps 0,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

CASES = {
    "small": ((4, 128, 128, 80), 4),
    "brats": ((4, 240, 240, 160), 4),
    "liver": ((1, 512, 512, 208), 3),
}
CHANNELS = (32, 64, 128, 256, 512)
INFERERS = ("slab-labels", "monai-sliding-window")
SPILLED = "slab-labels-spilled"  # ours with the input in a temporary file, read slab by slab, as `predict` runs patch
TIMED = INFERERS + (SPILLED,)  # the inferers of --paired-timing
SAFETY = 0.85  # run a case only if its planned peak is below this share of the available memory


def variant_setup(shape, classes, variant_name, precision, repeats, timing_file, device):
    """Build random-weight networks and a random image; the returned callable segments it ``repeats`` times."""
    import torch

    from medseg_mem.core.config import InferenceConfig, ModelConfig
    from medseg_mem.core.precision import half_convolutions
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D
    from medseg_mem.variants import TrainedVariant, get_variant

    torch.manual_seed(0)
    model, variant = ModelConfig(channels=CHANNELS), get_variant(variant_name)
    nets = {s.name: half_convolutions(channels_last_layout(UNet3D(s.in_channels(shape[0], classes, model), classes,
                                                                  CHANNELS).eval()).to(device), precision)
            for s in variant.stages()}  # fmt: skip
    image = torch.randn((1, *shape), device=device)
    inference = InferenceConfig(precision=precision)
    run = TrainedVariant(variant, nets, model, classes, inference)
    return _timed(lambda: run.segment(image), repeats, timing_file, device)


def inferer_setup(shape, classes, inferer_name, overlap, precision, repeats, timing_file, device):
    """One U-Net on slabs of 16 with our streamed :class:`SlabInferer` or MONAI's ``SlidingWindowInferer``;
    for :data:`SPILLED`, ours reads the image from a temporary file (``SpilledImage``), so it is not resident."""
    from medseg_mem.core.precision import with_precision
    from medseg_mem.predict.files import SpilledImage

    net, image = _net_and_image(shape, classes, device, precision)
    if inferer_name == SPILLED:
        image = SpilledImage(image[0], device)
    inferer, network = _inferer(inferer_name, overlap), with_precision(net, precision)
    return _timed(lambda: inferer(image, network), repeats, timing_file, device)


def paired_setup(shape, classes, overlap, precision, repeats, timing_file, device):
    """Our streamed inferer (image resident, and image in a temporary file as ``predict`` runs ``patch``) and
    MONAI's on the same U-Net in one process, in rotating order (ours, MONAI, spilled, spilled, MONAI, ours, ...),
    so load from other jobs hits all alike; writes ``{inferer: [seconds, ...], "network " + inferer: [seconds,
    ...]}`` to ``timing_file``: each run's seconds, and the part of them spent inside the network's calls."""
    import torch

    from medseg_mem.core.precision import with_precision
    from medseg_mem.predict.files import SpilledImage

    net, image = _net_and_image(shape, classes, device, precision)
    inferers, network = {name: _inferer(name, overlap) for name in TIMED}, with_precision(net, precision)
    images = {name: image for name in TIMED}
    images[SPILLED] = SpilledImage(image[0], device)
    inside = [0.0]

    def timed_network(x):
        start = time.perf_counter()
        output = network(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        inside[0] += time.perf_counter() - start
        return output

    def run():
        seconds = {key: [] for name in TIMED for key in (name, f"network {name}")}
        for index in range(len(TIMED) * repeats):
            order = TIMED if (index // len(TIMED)) % 2 == 0 else TIMED[::-1]
            name = order[index % len(TIMED)]
            inside[0], start = 0.0, time.perf_counter()
            output = inferers[name](images[name], timed_network)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
            seconds[f"network {name}"].append(inside[0])
            del output
        Path(timing_file).write_text(json.dumps(seconds))

    return run


def paired_timing(case, args):
    """Median seconds of the timed inferers, rotating in one process, per (overlap, precision)."""
    shape, classes = CASES[case]
    monai = INFERERS[1]
    for precision in args.precisions:
        for overlap in args.overlaps:
            _, seconds = measure_with_timings(paired_setup, (shape, classes, overlap, precision, args.repeats),
                                              args.device)  # fmt: skip
            medians = {name: statistics.median(values) for name, values in seconds.items()}
            outside = {name: statistics.median(a - b for a, b in zip(seconds[name], seconds[f"network {name}"]))
                       for name in TIMED}  # fmt: skip
            print(f"{case:6} paired timing overlap {overlap:g} {precision}: " + ", ".join(
                f"{name} {medians[name]:.2f} s {sorted(round(v, 2) for v in seconds[name])} (outside the network "
                f"{outside[name]:.2f} s)" for name in TIMED)
                + f"; streamed / MONAI {medians[INFERERS[0]] / medians[monai]:.3f}, input on disk / MONAI "
                f"{medians[SPILLED] / medians[monai]:.3f}", flush=True)  # fmt: skip


def _net_and_image(shape, classes, device, precision="fp32"):
    """A random-weight spec U-Net in eval mode (half convolution weights at a half precision, as ``predict``
    loads them) and a random image ``(1, *shape)``."""
    import torch

    from medseg_mem.core.precision import half_convolutions
    from medseg_mem.models.build import channels_last_layout
    from medseg_mem.models.unet import UNet3D

    torch.manual_seed(0)
    net = half_convolutions(channels_last_layout(UNet3D(shape[0], classes, CHANNELS).eval()).to(device), precision)
    return net, torch.randn((1, *shape), device=device)


def _inferer(name, overlap):
    """``slab-labels``: ours, streamed into a uint8 label map; ``monai-sliding-window``: MONAI with the same
    16-voxel slabs and overlap (Gaussian blending above 0), returning its float logits."""
    from monai.inferers import SlidingWindowInferer

    from medseg_mem.inference import SlabInferer

    if name in ("slab-labels", SPILLED):
        return SlabInferer(slab_size=16, output="labels", overlap=overlap)
    mode = "gaussian" if overlap > 0 else "constant"
    return SlidingWindowInferer(roi_size=(-1, -1, 16), overlap=overlap, sw_batch_size=1, padding_mode="constant",
                                mode=mode)  # fmt: skip


def _timed(segment, repeats, timing_file, device):
    """Wrap ``segment`` so each call's seconds are written to ``timing_file`` (no output kept between runs)."""
    import torch

    def run():
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            output = segment()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
            del output
        Path(timing_file).write_text(json.dumps(seconds))

    return run


def measure(setup, args, device):
    """``(MemoryReading, median seconds)`` of one setup, run in a measured process."""
    reading, seconds = measure_with_timings(setup, args, device)
    return reading, statistics.median(seconds)


def measure_with_timings(setup, args, device):
    """``(MemoryReading, what the setup's callable wrote to its timing file)``."""
    from medseg_mem.memory.measure import measure_peak

    with tempfile.TemporaryDirectory() as folder:
        timing_file = str(Path(folder) / "seconds.json")
        reading = measure_peak(setup, (*args, timing_file, device), device)
        return reading, json.loads(Path(timing_file).read_text())


def base_row(case, variant, device, reading, seconds, inferer, precision="fp32", overlap=None):
    """A results row with the run-level columns filled; planner columns are added by the caller."""
    import medseg_mem
    from medseg_mem.report.results import new_run_id, utc_timestamp

    shape, _ = CASES[case]
    return dict(
        run_id=new_run_id(variant), timestamp=utc_timestamp(), dataset="bench-" + "x".join(map(str, shape)),
        variant=variant, class_name="", class_index=-1, dice=None, peak_memory_bytes=reading.peak_bytes,
        memory_method=reading.method, device=device, inference_seconds_per_case=round(seconds, 3), train_steps=0,
        train_seconds=0, seed=0, channels="-".join(map(str, CHANNELS)), loss="", slab_size=16, downsample=0.3,
        n_test_cases=1, package_version=medseg_mem.__version__, source="benchmark", planned_bytes=None,
        planner_error=None, inferer=inferer, inference_precision=precision, overlap=overlap,
        sw_batch_size=None if variant == "full" else 1,
    )  # fmt: skip


def write_rows(path: Path, rows) -> None:
    """Append ``rows`` to the CSV at ``path`` with pandas, atomically (temp file in the folder + os.replace)."""
    import pandas as pd

    from medseg_mem.report.results import RESULT_COLUMNS

    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    if path.exists():
        frame = pd.concat([pd.read_csv(path, dtype=str, keep_default_na=False), frame.astype(object)])
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    frame.to_csv(temp, index=False)
    os.replace(temp, path)


def planned(variant, case, args, budget, overlap=0.0, precision="fp32", input_on_disk=False):
    """The planner's prediction for ``variant`` on ``case`` at ``overlap`` and ``precision`` (channels-last)."""
    from medseg_mem.core.config import InferenceConfig, ModelConfig
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import plan_variant

    shape, classes = CASES[case]
    calibration = cached_calibration(args.calibration, args.device, announce=print, precision=precision,
                                     channels_last=True)  # fmt: skip
    inference = InferenceConfig(overlap=overlap, precision=precision)
    return plan_variant(variant, shape, classes, ModelConfig(channels=CHANNELS), calibration=calibration,
                        budget_bytes=budget, inference=inference, device=args.device,
                        input_on_disk=input_on_disk)  # fmt: skip


def with_plan(row, plan, reading):
    """``row`` with the planner's prediction and its relative error against ``reading``."""
    error = abs(plan.predicted_bytes - reading.peak_bytes) / reading.peak_bytes
    return {**row, "planned_bytes": plan.predicted_bytes, "planner_error": round(error, 4), "channels_last": True}


def run_variants(case, args, budget, out):
    """Plan, then measure, every variant of ``case``; infeasible ones are reported and skipped."""
    from medseg_mem.core.units import format_bytes

    shape, classes = CASES[case]
    repeats = args.repeats if case == "small" or args.device != "cpu" else 1
    for variant, precision in ((v, p) for v in args.variants for p in args.precisions):
        plan = planned(variant, case, args, budget, precision=precision)
        if plan.predicted_bytes > SAFETY * budget:
            print(f"{case:6} {variant:8} skipped: planned {format_bytes(plan.predicted_bytes)} > "
                  f"{SAFETY:.0%} of {format_bytes(budget)} available", flush=True)  # fmt: skip
            continue
        reading, seconds = measure(variant_setup, (shape, classes, variant, precision, repeats), args.device)
        row = base_row(case, variant, args.device, reading, seconds, "" if variant == "full" else "slab", precision)
        write_rows(out, [with_plan(row, plan, reading)])
        print(f"{case:6} {variant:8} {precision} peak {format_bytes(reading.peak_bytes):>9} ({reading.method})  "
              f"time {seconds:7.2f} s  planned {format_bytes(plan.predicted_bytes):>9}", flush=True)


def compare_inferers(case, args, budget, out):
    """The streamed slab inferer against MONAI's sliding window on the same U-Net, per overlap and precision.

    Each inferer runs in its own measured process (memory, and the median of ``repeats`` timed runs); the order
    of the two alternates from one (overlap, precision) pair to the next.
    """
    from medseg_mem.core.units import format_bytes

    shape, classes = CASES[case]
    repeats = args.repeats if case == "small" or args.device != "cpu" else 1
    pairs = [(overlap, precision) for precision in args.precisions for overlap in args.overlaps]
    for index, (overlap, precision) in enumerate(pairs):
        peaks, medians = {}, {}
        for name in (INFERERS + (SPILLED,) if index % 2 == 0 else (SPILLED,) + INFERERS[::-1]):
            reading, medians[name] = measure(inferer_setup, (shape, classes, name, overlap, precision, repeats),
                                             args.device)  # fmt: skip
            row = base_row(case, "patch", args.device, reading, medians[name], name, precision, overlap)
            row["dataset"] = row["dataset"].replace("bench-", "bench-inferer-")
            if name != INFERERS[1]:  # the streamed inferer is the patch variant's inference
                plan = planned("patch", case, args, budget, overlap, precision, input_on_disk=name == SPILLED)
                row = with_plan(row, plan, reading)
            write_rows(out, [{**row, "channels_last": True}])
            peaks[name] = reading.peak_bytes
            print(f"{case:6} {name:21} overlap {overlap:g} {precision}: peak {format_bytes(reading.peak_bytes):>9}"
                  f"  time {medians[name]:7.2f} s", flush=True)  # fmt: skip
        monai = INFERERS[1]
        memory, seconds = peaks[INFERERS[0]] / peaks[monai], medians[INFERERS[0]] / medians[monai]
        print(f"{case:6} streamed slab / MONAI at overlap {overlap:g} {precision}: memory {memory:.3f} "
              f"(input on disk: {peaks[SPILLED] / peaks[monai]:.3f}), time {seconds:.3f} "
              f"({medians[SPILLED] / medians[monai]:.3f})", flush=True)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sizes", default="small,brats,liver", help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (1 for big cases on CPU)")
    parser.add_argument("--compare", default="small,brats", help="cases for the slab vs MONAI comparison ('' none)")
    parser.add_argument("--out", type=Path, help="results CSV [benchmarks/results/memory_<device>.csv]")
    parser.add_argument("--liver-depth", type=int, default=208, help="last axis of the liver-like case")
    parser.add_argument("--calibration", type=Path, help="a calibration file [the user's cache]")
    parser.add_argument("--variants", default="full,patch,cascade", help="variants measured for --sizes")
    parser.add_argument("--precisions", default="fp32", help="comma-separated inference precisions (fp32,bf16,fp16)")
    parser.add_argument("--overlaps", default="0", help="comma-separated slab overlaps for --compare, e.g. 0,0.5")
    parser.add_argument("--paired-timing", default="", help="cases whose inferer times (ours, MONAI, ours with the "
                        "image on disk) are taken in one process, rotating, --repeats runs each (no memory rows)")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes + args.compare.split(",") if s and s not in CASES]
    if unknown or args.repeats < 1:
        parser.error(f"--sizes/--compare must name cases from {', '.join(CASES)} and --repeats must be >= 1")
    args.variants, args.precisions = args.variants.split(","), args.precisions.split(",")
    args.overlaps = [float(o) for o in args.overlaps.split(",")]
    CASES["liver"] = ((1, 512, 512, args.liver_depth), 3)
    run(args, sizes, [s for s in args.compare.split(",") if s])


def run(args, sizes, compare) -> None:
    import torch

    from medseg_mem.core.units import format_bytes
    from medseg_mem.memory.calibration import cached_calibration
    from medseg_mem.memory.planner import default_budget

    out = args.out or Path(f"benchmarks/results/memory_{args.device}.csv")
    budget, source = default_budget(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {format_bytes(budget)} ({source})")
    for precision in args.precisions:
        calibration = cached_calibration(args.calibration, args.device, announce=print,
                                         precision=precision, channels_last=True)  # fmt: skip
        print(f"calibration {calibration.key}: multiplier {calibration.multiplier:.3f}, "
              f"offset {format_bytes(calibration.offset_bytes)}", flush=True)  # fmt: skip
    start = time.perf_counter()
    for case in dict.fromkeys(sizes + compare):
        if case in sizes:
            run_variants(case, args, budget, out)
        if case in compare:
            compare_inferers(case, args, budget, out)
    for case in (c for c in args.paired_timing.split(",") if c):
        paired_timing(case, args)
    print(f"done in {time.perf_counter() - start:.0f} s; rows in {out}")


if __name__ == "__main__":
    main()
