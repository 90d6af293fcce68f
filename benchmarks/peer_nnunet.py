"""Peer run: nnU-Net v2 (3d_fullres, its own planning and preprocessing) on medseg-mem's split and budget, CPU.

Needs ``nnunetv2`` (``pip install 'medseg-mem[peer]'``); without it the script stops with a one-line error.
Example (the real benchmark: 15 minutes of training on the 2-core CPU)::

    python benchmarks/peer_nnunet.py --minutes 15

Steps (WORK is ``--work``, default ``medseg-work/hippocampus``, the folder ``hippocampus.py`` prepares into):

1. medseg-mem prepares the task into WORK/prepared (once): its 60/20/20 split (156/52/52) is the peer's split.
2. nnU-Net's MSD converter writes WORK/nnunet/raw/Dataset004_Hippocampus; the test cases are then moved to its
   imagesTs/labelsTs, so that nnU-Net's fingerprint and plans never see them. nnU-Net's ``nnUNet_raw``,
   ``nnUNet_preprocessed`` and ``nnUNet_results`` point into WORK/nnunet, set for this process and its children
   only.
3. ``nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres -np 2`` (nnU-Net's own plan: patch, batch, network).
4. ``splits_final.json`` with one fold: train = medseg-mem's train ids, val = its val ids.
5. Training: nnU-Net's trainer (SGD, poly LR, Dice+CE with deep supervision, its augmentation) on the CPU in
   short epochs (``--iterations-per-epoch``, ``--val-iterations``); after every epoch the number of epochs is
   set to those done plus those that still fit in the budget at the mean epoch time, and the poly schedule's
   length with it, so the learning rate reaches its end when the budget does. The first epoch always runs.
   Augmentation runs in this process (``--da-workers 0``, as medseg-mem's runs load without workers), so the
   training peak memory counts it. nnU-Net's final checkpoint is used (its default), and its full validation
   pass after training is skipped (medseg-mem's test scoring replaces it).
6. Test: ``nnUNetPredictor`` (nnU-Net's defaults: tile step 0.5, Gaussian weighting, mirroring; ``--no-mirroring``
   turns it off) on each test image as read by nnU-Net's reader, one case at a time, the first once untimed
   (warm-up). Dice with medseg-mem's metric on the raw label's grid; seconds per case cover nnU-Net's
   preprocessing, sliding window and resampling back (not reading the file).
7. Peak inference memory: medseg-mem's ``measure_peak`` (a fresh process; resident tensors + ``VmHWM``) on the
   largest test case; rows (``source = peer``, variant ``nnunet-3d_fullres``) appended to ``--results``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_common import (  # noqa: E402
    BudgetClock, OneLineParser, PeerRun, add_common_arguments, check_results, fail, file_run, prepared_dataset,
    score_cases, training_peak,
)  # fmt: skip

PROG = "peer_nnunet.py"
VARIANT = "nnunet-3d_fullres"
CONFIGURATION = "3d_fullres"
INSTALL = "pip install 'medseg-mem[peer]' (or pip install nnunetv2)"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def require_nnunet() -> None:
    """Stop with a one-line error (exit 2) when ``nnunetv2`` cannot be imported by this Python."""
    if importlib.util.find_spec("nnunetv2") is None:
        fail(PROG, f"nnunetv2 is not installed for {sys.executable}; install it with {INSTALL}")


def arguments(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--iterations-per-epoch", type=int, default=10,
                        help="training iterations per nnU-Net epoch (nnU-Net: 250) [%(default)s]")
    parser.add_argument("--val-iterations", type=int, default=2,
                        help="validation iterations per epoch, for nnU-Net's EMA pseudo Dice (nnU-Net: 50) "
                             "[%(default)s]")
    parser.add_argument("--da-workers", type=int, default=0,
                        help="nnU-Net's augmentation processes (nnUNet_n_proc_DA); 0: in this process [%(default)s]")
    parser.add_argument("--processes", type=int, default=2, help="-np of conversion and preprocessing [%(default)s]")
    parser.add_argument("--no-mirroring", action="store_true", help="predict without nnU-Net's mirroring")
    args = parser.parse_args(argv)
    for name in ("iterations_per_epoch", "val_iterations", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.da_workers < 0:
        parser.error(f"--da-workers must be >= 0; got {args.da_workers}")
    return args


def nnunet_folders(work: Path) -> Dict[str, Path]:
    """nnU-Net's three folders inside the work folder."""
    base = work.resolve() / "nnunet"
    return {name: base / name.split("_")[1] for name in FOLDERS}


def use_nnunet_folders(work: Path) -> Dict[str, Path]:
    """Point nnU-Net's environment variables into ``work`` (this process and its children; before any import)."""
    folders = nnunet_folders(work)
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    return folders


def task_id(task: Path) -> int:
    """The MSD task number of a folder named ``TaskNN_Name`` (nnU-Net's dataset id)."""
    head = task.resolve().name.split("_")[0]
    if not (head.startswith("Task") and head[4:].isdigit()):
        fail(PROG, f"--task {task}: the folder must be named TaskNN_Name (MSD), as nnU-Net's converter needs")
    return int(head[4:])


def nnunet_call(function: str, *args: str) -> None:
    """Run one of nnU-Net's command-line entry points (``module:function``) in a child process with ``args``."""
    module, name = function.split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {name}; {name}()"
    done = subprocess.run([sys.executable, "-c", code, *args])
    if done.returncode != 0:
        fail(PROG, f"nnU-Net's {name} {' '.join(args)} failed with exit code {done.returncode} (its output is above)")


def msd_view(task: Path, work: Path) -> Path:
    """A folder named like the (read-only) task that nnU-Net's converter accepts: links to its imagesTr and
    labelsTr, an empty imagesTs and a copy of its dataset.json with a ``test`` list (the converter requires both)."""
    view = work.resolve() / "nnunet" / "msd" / task.resolve().name
    (view / "imagesTs").mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr"):
        if not (view / name).exists():
            (view / name).symlink_to(task.resolve() / name)
    meta = json.loads((task / "dataset.json").read_text())
    (view / "dataset.json").write_text(json.dumps({"test": [], **meta}, indent=2))
    return view


def convert(task: Path, work: Path, raw: Path, test_ids: List[str], processes: int) -> Path:
    """nnU-Net's MSD conversion into ``raw`` (once), then the test cases moved out of its training folders.

    The test ids are recorded beside the converted data; a work folder converted for another split is refused
    (its plans and preprocessed cases would hold test cases or lack training ones).
    """
    name = f"Dataset{task_id(task):03d}_{task.resolve().name.split('_', 1)[1]}"
    target, record = raw / name, raw / name / "medseg_mem_test_ids.json"
    if not (target / "dataset.json").is_file():
        view = msd_view(task, work)
        nnunet_call("nnunetv2.dataset_conversion.convert_MSD_dataset:entry_point", "-i", str(view),
                    "-np", str(processes))  # fmt: skip
        move_test_cases(target, test_ids)
        record.write_text(json.dumps(sorted(test_ids)))
    if not record.is_file() or json.loads(record.read_text()) != sorted(test_ids):
        fail(PROG, f"{target} was converted for another test split than the prepared dataset's; "
                   f"remove {work / 'nnunet'} or give another --work")
    return target


def move_test_cases(target: Path, test_ids: List[str]) -> None:
    """Move each test case to imagesTs/labelsTs (planning then sees train + val only); fix ``numTraining``."""
    (target / "labelsTs").mkdir(exist_ok=True)
    for case in test_ids:
        for folder, file in (("imagesTr", f"{case}_0000.nii.gz"), ("labelsTr", f"{case}.nii.gz")):
            if (target / folder / file).exists():
                shutil.move(str(target / folder / file), str(target / folder.replace("Tr", "Ts") / file))
    meta = json.loads((target / "dataset.json").read_text())
    meta["numTraining"] = len(list((target / "labelsTr").glob("*.nii.gz")))
    (target / "dataset.json").write_text(json.dumps(meta, indent=2))


def plan_and_preprocess(dataset_id: int, preprocessed: Path, processes: int) -> dict:
    """nnU-Net's planning and 3d_fullres preprocessing (once); return its plans."""
    folder = next(iter(preprocessed.glob(f"Dataset{dataset_id:03d}_*")), None)
    if folder is None or not (folder / "nnUNetPlans.json").is_file() or not any(folder.glob("nnUNetPlans_3d_fullres")):
        nnunet_call("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
                    "-d", str(dataset_id), "-c", CONFIGURATION, "-np", str(processes))  # fmt: skip
        folder = next(preprocessed.glob(f"Dataset{dataset_id:03d}_*"))
    return json.loads((folder / "nnUNetPlans.json").read_text())


def write_splits(dataset, folder: Path) -> Path:
    """Write nnU-Net's ``splits_final.json`` into ``folder``: one fold, medseg-mem's train and val ids.

    nnU-Net's case identifiers are the image file names without ``.nii.gz``, as medseg-mem's case ids.
    """
    path = Path(folder) / "splits_final.json"
    path.write_text(json.dumps([{"train": dataset.ids("train"), "val": dataset.ids("val")}], indent=2))
    return path


def budget_trainer_class(iterations: int, val_iterations: int):
    """nnU-Net's trainer with short epochs that stops when the budget of its ``clock`` (a :class:`BudgetClock`,
    set before :meth:`run_training`) is spent; see the module docstring."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetTrainer(nnUNetTrainer):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):  # fmt: skip
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = iterations, val_iterations
            self.epoch_seconds, self.train_seconds, self.clock = [], [], None

        def run_training(self):
            """nnU-Net's loop, with the number of epochs fitted to the budget after every epoch."""
            self.on_train_start()
            while self.current_epoch < self.num_epochs:
                started = time.perf_counter()
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
                self.on_train_epoch_end(outputs)
                self.train_seconds.append(time.perf_counter() - started)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    batches = range(self.num_val_iterations_per_epoch)
                    self.on_validation_epoch_end([self.validation_step(next(self.dataloader_val)) for _ in batches])
                self.on_epoch_end()
                self.epoch_seconds.append(time.perf_counter() - started)
                self.fit_epochs_to_budget()
            self.on_train_end()

        def fit_epochs_to_budget(self) -> None:
            """Epochs done + epochs that still fit at the mean epoch time; the poly LR schedule ends there too."""
            mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
            self.num_epochs = self.current_epoch + int(self.clock.remaining // mean)
            self.lr_scheduler.max_steps = max(1, self.num_epochs)

    return BudgetTrainer


def train(trainer_class, plans: dict, preprocessed_folder: Path, args, clock: BudgetClock):
    """Train fold 0 within ``clock``'s budget; return the trainer (its output folder holds ``checkpoint_final.pth``)."""
    import torch

    os.environ["nnUNet_n_proc_DA"] = str(args.da_workers)  # read when the data loaders are made; planning needs >= 1
    dataset_json = json.loads((preprocessed_folder / "dataset.json").read_text())
    trainer = trainer_class(dict(plans, continue_training=False), CONFIGURATION, 0, dataset_json, torch.device("cpu"))
    trainer.clock = clock
    trainer.run_training()
    return trainer


def load_predictor(output_folder: str, mirroring: bool):
    """nnU-Net's predictor with the final checkpoint of ``output_folder`` (the trainer's fold folder).

    Built with :meth:`nnUNetPredictor.manual_initialization` because nnU-Net would look the trainer class up by
    name among its own, and this script's subclass is not there (its network is nnU-Net's default one).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = Path(output_folder).parent
    plans, dataset_json = (json.loads((base / f).read_text()) for f in ("plans.json", "dataset.json"))
    checkpoint = torch.load(Path(output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    manager = PlansManager(plans)
    configuration = manager.get_configuration(checkpoint["init_args"]["configuration"])
    outputs = manager.get_label_manager(dataset_json).num_segmentation_heads
    inputs = determine_num_input_channels(manager, configuration, dataset_json)
    network = nnUNetTrainer.build_network_architecture(manager, configuration, inputs, outputs, False)
    predictor = nnUNetPredictor(use_mirroring=mirroring, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)  # fmt: skip
    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
    predictor.manual_initialization(network, manager, configuration, [checkpoint["network_weights"]], dataset_json,
                                    checkpoint["trainer_name"], mirror_axes)
    return predictor


def case_reader(predictor, raw: Path):
    """``load(case_id) -> ((image, properties), label)`` of a test case, read with nnU-Net's own reader."""
    reader = predictor.plans_manager.image_reader_writer_class()

    def load(case_id: str):
        image, properties = reader.read_images([str(raw / "imagesTs" / f"{case_id}_0000.nii.gz")])
        label, _ = reader.read_seg(str(raw / "labelsTs" / f"{case_id}.nii.gz"))
        return (image, properties), label

    return load


def segmenter(predictor):
    """``segment((image, properties))``: nnU-Net's prediction of one case, on the image's own grid."""
    return lambda inputs: predictor.predict_single_npy_array(inputs[0], inputs[1])


def memory_setup(output_folder: str, raw: str, case_id: str, mirroring: bool):
    """Top-level (picklable) setup for ``measure_peak``: the predictor and one loaded case; returns the prediction."""
    predictor = load_predictor(output_folder, mirroring)
    inputs, _ = case_reader(predictor, Path(raw))(case_id)
    segment = segmenter(predictor)
    return lambda: segment(inputs)


def network_summary(plans: dict) -> Dict[str, object]:
    """What the 3d_fullres plan chose: patch, batch, spacing and the network's stages and widths."""
    config = plans["configurations"][CONFIGURATION]
    arch = config.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    return {
        "patch_size": config["patch_size"], "batch_size": config["batch_size"], "spacing": config["spacing"],
        "network": arch.get("network_class_name", ""), "features_per_stage": kwargs.get("features_per_stage"),
        "strides": kwargs.get("strides"), "n_conv_per_stage": kwargs.get("n_conv_per_stage"),
        "batch_dice": config.get("batch_dice"), "normalization": config.get("normalization_schemes"),
    }  # fmt: skip


def peer_run(trainer, plans, evaluation, memory, peak, clock: BudgetClock, args) -> PeerRun:
    """The results columns and the details of a finished nnU-Net run."""
    from importlib.metadata import version

    summary = network_summary(plans)
    epochs = len(trainer.epoch_seconds)
    steps = epochs * trainer.num_iterations_per_epoch
    columns = {
        "seed": args.seed, "channels": "-".join(map(str, summary["features_per_stage"] or [])),
        "loss": "dice_ce" + ("+batch" if summary["batch_dice"] else "") + "+deep_supervision",
        "package_version": f"nnunetv2-{version('nnunetv2')}",
        "inferer": "nnunet-sliding-window" + ("" if args.no_mirroring else "+mirroring"),
        "precision": "fp32", "checkpointing": False, "channels_last": False, "inference_precision": "fp32",
        "overlap": 0.5, "sw_batch_size": 1,
    }  # fmt: skip
    details = {
        "plan": summary, "epochs": epochs, "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch, "initial_lr": trainer.initial_lr,
        "epoch_seconds": [round(s, 2) for s in trainer.epoch_seconds],
        "seconds_per_iteration": sum(trainer.train_seconds) / max(1, steps), "da_workers": args.da_workers,
        "mirroring": not args.no_mirroring, "checkpoint": "checkpoint_final.pth", "train_memory_method": peak.method,
        "output_folder": trainer.output_folder, "train_cpu_seconds": round(clock.cpu_seconds, 1),
        "cpu_seconds_per_iteration": clock.cpu_seconds / max(1, steps),
    }  # fmt: skip
    return PeerRun(VARIANT, evaluation, memory, peak.peak_bytes, steps, clock.elapsed, columns, details)


def main(argv=None) -> None:
    args = arguments(argv)
    require_nnunet()
    if not (args.task / "dataset.json").is_file():
        fail(PROG, f"--task {args.task}: no MSD task there (dataset.json missing); nnU-Net converts it itself")
    check_results(args.results, PROG)
    dataset = prepared_dataset(args, PROG)
    folders = use_nnunet_folders(args.work)
    dataset_id = task_id(args.task)
    raw = convert(args.task, args.work, folders["nnUNet_raw"], dataset.ids("test"), args.processes)
    plans = plan_and_preprocess(dataset_id, folders["nnUNet_preprocessed"], args.processes)
    preprocessed = folders["nnUNet_preprocessed"] / raw.name
    write_splits(dataset, preprocessed)
    run(args, dataset, raw, plans, preprocessed)


def run(args, dataset, raw: Path, plans: dict, preprocessed: Path) -> None:
    """Train within the budget, score the test split, measure memory, file the rows."""
    from medseg_mem.memory.measure import measure_peak
    from medseg_mem.training.seeding import seed_everything

    seed_everything(args.seed)  # Python, numpy and torch: weights and augmentation draws (not bit-reproducible)
    shutil.rmtree(nnunet_folders(args.work)["nnUNet_results"] / raw.name, ignore_errors=True)
    trainer_class = budget_trainer_class(args.iterations_per_epoch, args.val_iterations)  # imports outside the clock
    clock = BudgetClock(args.minutes)
    with training_peak() as peak:
        trainer = train(trainer_class, plans, preprocessed, args, clock)
    clock.stop()
    predictor = load_predictor(trainer.output_folder, not args.no_mirroring)
    test = dataset.ids("test")
    evaluation = score_cases(segmenter(predictor), case_reader(predictor, raw), test, dataset.num_classes)
    setup_args = (trainer.output_folder, str(raw), dataset.largest("test"), not args.no_mirroring)
    memory = measure_peak(memory_setup, setup_args, "cpu")
    file_run(peer_run(trainer, plans, evaluation, memory, peak, clock, args), dataset, args.results, args.work,
             args.minutes)  # fmt: skip


if __name__ == "__main__":
    main()
