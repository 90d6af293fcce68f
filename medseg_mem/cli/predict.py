"""``medseg-mem predict``: parse options, call :func:`medseg_mem.predict.predict`, report failed scans by name."""

from __future__ import annotations

from pathlib import Path

import click

from medseg_mem.cli.common import library_errors, parse_budget, slab_inference_options, tta_config, tta_options
from medseg_mem.cli.training_options import parse_variants
from medseg_mem.core.locations import HOME_TEXT, default_results
from medseg_mem.core.names import DEVICE_NAMES, OUT_OF_CORE_NAMES, PRECISION_NAMES

#: ``--engine``: PyTorch, or ONNX Runtime on the run's ONNX export (as ``medseg_mem.export.onnx_engine.ENGINE_NAMES``).
ENGINES = ("torch", "onnxruntime")


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT...")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="A run folder (or a run id in $MEDSEG_MEM_HOME/runs, else medseg-work/runs) or any .pt in it "
                   "(every stage's best.pt is used), an exported bundle folder or an ONNX export folder (their "
                   "SHA-256 digests checked). With --variant: a folder of runs [the work folder's runs].")
@click.option("--variant", "variants", multiple=True, callback=parse_variants,
              help="With a folder of runs: auto (the most accurate run whose plan fits --budget) or a variant "
                   "name (its best run by validation Dice), among the runs of one dataset that fits the scans "
                   "(their channels; the results CSV's datasets); the line printed says which run and why.")
@click.option("--dataset", metavar="NAME|FINGERPRINT",
              help="With --variant: the dataset whose runs to pick from, when runs of several fit the scans "
                   "[the work folder's prepared dataset, else the newest run's].")
@click.option("--budget", "budget_bytes", callback=parse_budget,
              help="Memory the prediction must fit, e.g. 8GB: its planned peak (the whole process) is checked "
                   "before the networks load; --variant auto picks the run that fits [free memory less 10 %].")
@click.option("--no-memory-check", "memory_check", flag_value=False, default=True,
              help="Predict even when the planned peak exceeds --budget.")
@click.option("--results", type=click.Path(path_type=Path), default=default_results,
              show_default=f"{HOME_TEXT}/results.csv",
              help="With --variant: the results CSV that ranks the variants and runs by accuracy; only runs of "
                   "its datasets are picked.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the label maps (<name>_seg.nii.gz), created if missing.")
@click.option("--overwrite", is_flag=True, help="Replace label maps that exist already.")
@click.option("--device", type=click.Choice(DEVICE_NAMES), default="auto", show_default=True,
              help="auto (cuda if available), cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISION_NAMES), default="fp32", show_default=True,
              help="fp32, or autocast the networks to bf16 / fp16 (about half the memory).")
@slab_inference_options
@tta_options
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="Channels-last network layout (less memory and faster on CPU; labels agree to rounding).")
@click.option("--engine", type=click.Choice(ENGINES), default="torch", show_default=True,
              help="torch, or onnxruntime: the run's ONNX models (<run folder>/onnx from `medseg-mem export "
                   "--format onnx`, else exported to a temporary folder) on ONNX Runtime's CPU provider, fp32; "
                   "needs pip install 'medseg-mem[onnx]'.")
@click.option("--out-of-core", "out_of_core", type=click.Choice(OUT_OF_CORE_NAMES), default="auto", show_default=True,
              help="Read, segment and write each scan a chunk of slices at a time, so memory does not grow with the "
                   "scan (patch and cascade runs, --overlap 0): auto when the in-memory plan is over --budget, "
                   "always, or never.")
@click.option("--overlay", is_flag=True,
              help="Also draw OUT/<name>_overlay.png: the scan's three planes through the prediction, outlined.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@library_errors
def predict(inputs, checkpoint, variants, dataset, budget_bytes, memory_check, results, out_dir, overwrite, device,
            precision, overlap, sw_batch_size, tta, tta_axes, channels_last, engine, out_of_core, overlay,
            quiet) -> None:  # fmt: skip
    """Segment NIfTI scans (files or folders; 3D, or 4D with channels last) with a trained run.

    Each INPUT gets OUT/<name>_seg.nii.gz: uint8 labels with exactly the input's shape and affine, so it
    overlays in 3D Slicer or ITK-SNAP. Scans that fail are named; the others are still written. Before the
    networks load, the planned peak is checked against --budget. The summary gives the process's measured peak
    resident memory (what top shows) beside the plan; like the planner's measurements, this process pins glibc's
    allocator (blocks of 1 MiB and more are mapped and returned when freed), so its memory follows the live
    tensors.

    \b
    Example:
      medseg-mem predict --checkpoint medseg-work/runs/<run id> scan.nii.gz --out predictions/
    """
    from medseg_mem.core.config import InferenceConfig
    from medseg_mem.predict import predict as run_predict

    inference = InferenceConfig(sw_batch_size, overlap, precision, channels_last, **tta_config(tta, tta_axes))
    checkpoint = pick_run(checkpoint, variants, budget_bytes, results, inputs, device, inference, dataset,
                          out_of_core)  # fmt: skip
    summary = run_predict(checkpoint, inputs, out_dir, overwrite=overwrite, device=device, progress=not quiet,
                          inference=inference, engine=engine, warn=lambda line: click.echo(line, err=True),
                          overlay=overlay, budget_bytes=budget_bytes, memory_check=memory_check,
                          out_of_core=out_of_core)  # fmt: skip
    for _scan, reason in summary.failed:
        click.echo(f"failed: {reason}", err=True)
    click.echo(summary.line())
    if not summary.ok:
        names = ", ".join(str(scan) for scan, _ in summary.failed)
        total = len(summary.written) + len(summary.failed)
        raise click.ClickException(f"{len(summary.failed)} of {total} scan(s) failed: {names}")


def pick_run(checkpoint: Path, variants, budget_bytes, results: Path, inputs, device: str, inference,
             dataset=None, out_of_core: str = "auto") -> Path:  # fmt: skip
    """``--checkpoint`` itself; with ``--variant``, the run of a runs folder it picks (said on stdout)."""
    from medseg_mem.core.locations import default_runs, run_folder

    given = click.get_current_context().get_parameter_source("variants").name != "DEFAULT"
    if not given:
        if checkpoint is None:
            raise click.UsageError("give --checkpoint RUN (a run folder or run id), or --variant auto|NAME to pick "
                                   "one from the runs folder")  # fmt: skip
        return run_folder(checkpoint)
    checkpoint = default_runs() if checkpoint is None else checkpoint
    if len(variants) != 1 or variants == ("all",):
        raise click.BadParameter("give one variant name or auto", param_hint="--variant")
    from medseg_mem.core.device import resolve_device
    from medseg_mem.predict.auto import choose_run, named_run, scans_of

    if variants[0] != "auto":
        return named_run(checkpoint, variants[0], scans_of(inputs), results, click.echo, dataset)
    torch_device = resolve_device(device).type
    return choose_run(checkpoint, scans_of(inputs), results, budget_bytes, torch_device, inference, click.echo,
                      dataset, out_of_core)  # fmt: skip
