"""Peak memory and time of the out-of-core engine (``medseg_mem.data.streaming``) on synthetic CT-like scans,
against the in-memory MONAI pipeline.

Each measured job runs in a fresh Python process under GNU ``/usr/bin/time -v`` (its "Maximum resident set size"
is the whole process: interpreter, torch, MONAI, nibabel and the data), so the figures are what a user's
``predict`` process would add up to without a network:

* ``stream``: ``stream_scan`` (survey pass, then slabs of ``--depth`` slices, normalised) -> an identity "network"
  that thresholds each slab into labels 0/1/2 -> ``LabelMapWriter`` (orientation and resampling undone slab by
  slab) -> ``<name>_seg.nii.gz`` written atomically;
* ``in-memory``: ``build_preprocessing`` on the whole scan -> the same thresholds on the whole image ->
  ``restore_labels`` (``Invertd``; ``restore_grid`` on probabilities for resampled runs) -> ``write_label_map``:
  what ``predict`` does today around its network.
* ``baseline``: the same imports, nothing else (what the runtime alone holds).

Time per voxel is the job's own seconds (from opening the scan to the renamed label map; imports excluded) over
the scan's voxels.

The scans (int16, air -1000 HU around an elliptic body of soft tissue and bone, noise; axes LPS as DICOM
converters write them, so orientation flips two axes) are written on the fly into a temporary folder
(``--workdir``, default ``$TMPDIR``) slab by slab and deleted at the end; nothing is committed.

Usage::

    python benchmarks/bench_streaming.py           # 512x512x300 and 512x512x2000, .nii and .nii.gz
    python benchmarks/bench_streaming.py --shapes 512x512x300 --formats nii --spacing 1,1,2.5
    python benchmarks/bench_streaming.py --log benchmarks/results/bench_streaming_cpu.log
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CT_STATISTICS = {"lower": -1000.0, "upper": 1500.0, "mean": 40.0, "std": 350.0}
THRESHOLDS = (0.0, 1.5)  # normalised intensity: above the first soft tissue (1), above the second bone (2)


def settings(spacing):
    from medseg_mem.data.transforms import make_settings

    result = make_settings(["CT"], spacing=spacing)
    result["normalization"][0].update(CT_STATISTICS)
    return result


def write_ct(path: Path, shape, seed: int = 0) -> Path:
    """A CT-like int16 scan written slice block by slice block (``.nii`` or ``.nii.gz`` by the name)."""
    import nibabel as nib

    affine = np.diag([-0.8, -0.8, 1.5, 1.0])  # LPS-stored voxels: orientation flips X and Y
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_qform(affine, 1)
    header.set_sform(affine, 1)
    header.set_slope_inter(1.0, 0.0)
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as out:
        header.write_to(out)  # 348 bytes, the extension flag, up to vox_offset 352
        for first in range(0, shape[2], 32):
            depth = min(32, shape[2] - first)
            z = np.linspace(-1, 1, shape[2])[first : first + depth]
            body = (x[..., None] / 0.8) ** 2 + (y[..., None] / 0.6) ** 2 < 1 - 0.2 * z**2
            bone = (x[..., None] ** 2 + (y[..., None] + 0.3) ** 2) < 0.02
            block = np.where(body, 40, -1000) + np.where(bone & body, 900, 0)
            block = block + rng.normal(0, 20, block.shape) * body
            out.write(np.asfortranarray(block.astype(np.int16)).tobytes(order="F"))
    header_check = nib.load(str(path)).header
    if tuple(header_check.get_data_shape()) != tuple(shape):
        raise RuntimeError(f"{path}: written with shape {header_check.get_data_shape()}, expected {shape}")
    return path


def labels_of(image):
    """The identity "network": thresholds of the first channel, uint8 labels (X, Y, n)."""
    import torch

    return (image[0] > THRESHOLDS[0]).to(torch.uint8) + (image[0] > THRESHOLDS[1]).to(torch.uint8)


def run_stream(scan: Path, target: Path, spacing, depth: int) -> None:
    from medseg_mem.data.streaming import LabelMapWriter, stream_scan
    from medseg_mem.predict.files import _label_header

    start = time.perf_counter()
    with stream_scan(scan, settings(spacing)) as stream:
        surveyed = time.perf_counter()
        with LabelMapWriter(stream, target, lambda header: _label_header(header, 3)) as writer:
            for _, slab in stream.slabs(depth):
                writer.write(labels_of(slab))
            writer.commit()
    done = time.perf_counter()
    print(f"seconds open+survey {surveyed - start:.2f} slabs+write {done - surveyed:.2f} total {done - start:.2f}")


def run_in_memory(scan: Path, target: Path, spacing) -> None:
    import torch

    from medseg_mem.data.transforms import build_preprocessing
    from medseg_mem.predict.files import write_label_map
    from medseg_mem.predict.restore import restore_grid, restore_labels

    start = time.perf_counter()
    pipeline = build_preprocessing(settings(spacing), with_label=False)
    data = pipeline({"image": str(scan)})
    image = data["image"].as_tensor()
    if spacing is None:
        labels = restore_labels(pipeline, data, labels_of(image)[None], scan)
    else:
        one_hot = torch.nn.functional.one_hot(labels_of(image).long(), 3).permute(3, 0, 1, 2).float()
        labels = restore_grid(pipeline, data, one_hot, scan)
    write_label_map(labels, scan, target, 3)
    print(f"seconds total {time.perf_counter() - start:.2f}")


def child(args) -> None:
    from medseg_mem.memory.rss import pin_glibc_allocator

    pin_glibc_allocator()  # as predict does: freed blocks go back to the system
    import torch  # noqa: F401 - the baseline holds the same libraries
    import monai  # noqa: F401

    spacing = parse_spacing(args.spacing)
    if args.child == "stream":
        run_stream(Path(args.scan), Path(args.target), spacing, args.depth)
    elif args.child == "in-memory":
        run_in_memory(Path(args.scan), Path(args.target), spacing)


def measure(job: str, scan: Path, target: Path, args) -> dict:
    """Run one job in a fresh process under GNU time; its peak RSS (bytes), wall seconds and own timings."""
    command = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", job, "--scan", str(scan), "--target",
               str(target), "--depth", str(args.depth), "--spacing", args.spacing]  # fmt: skip
    threads = str(args.threads)
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    if result.returncode != 0:
        raise RuntimeError(f"{job} on {scan.name} failed:\n{result.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr).group(1)
    target.unlink(missing_ok=True)
    return {"peak": peak_kib * 1024, "wall": _seconds(wall), "own": result.stdout.strip()}


def _seconds(clock: str) -> float:
    parts = [float(p) for p in clock.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def parse_spacing(text: str):
    return None if text in ("", "none") else [float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="512x512x300,512x512x2000")
    parser.add_argument("--formats", default="nii,nii.gz")
    parser.add_argument("--spacing", default="none", help="the run's spacing in mm, e.g. 1,1,2.5 (default: native)")
    parser.add_argument("--depth", type=int, default=16, help="slices per slab")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each job (OMP_NUM_THREADS); 1 on a "
                        "machine shared with other jobs, where OpenMP threads wait on each other")  # fmt: skip
    parser.add_argument("--in-memory-shapes", default="512x512x300", help="shapes the in-memory pipeline runs on")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--log", default=None, help="also append the report to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scan", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    report(args)


def report(args) -> None:
    import torch

    lines = [f"bench_streaming {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__} cpu, {os.cpu_count()} cores;"
             f" {args.threads} torch thread(s) per job; spacing {args.spacing}, slabs of {args.depth}; peak = GNU time max RSS"
             " of the whole process"]
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir=args.workdir))
    in_memory = set(args.in_memory_shapes.split(","))
    try:
        base = measure("baseline", work / "none", work / "none_seg.nii.gz", args)
        lines.append(f"baseline (imports only)           peak {base['peak'] / 2**30:.3f} GiB")
        for shape_text in args.shapes.split(","):
            shape = tuple(int(v) for v in shape_text.split("x"))
            for fmt in args.formats.split(","):
                scan = write_ct(work / f"ct_{shape_text}.{fmt}", shape)
                jobs = ["stream"] + (["in-memory"] if shape_text in in_memory else [])
                for job in jobs:
                    got = measure(job, scan, work / f"ct_{shape_text}_seg.nii.gz", args)
                    seconds = float(re.search(r"total ([0-9.]+)", got["own"]).group(1))
                    per_voxel = seconds / np.prod(shape) * 1e9
                    lines.append(f"{job:9s} {shape_text:13s} .{fmt:6s} peak {got['peak'] / 2**30:.3f} GiB "
                                 f"(+{(got['peak'] - base['peak']) / 2**20:.0f} MiB over baseline) "
                                 f"{per_voxel:.1f} ns/voxel (process {got['wall']:.1f} s) [{got['own']}]")  # fmt: skip
                    print(lines[-1], flush=True)
                scan.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.log:
        with open(args.log, "a") as out:
            out.write(text)


if __name__ == "__main__":
    main()
