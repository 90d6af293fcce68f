"""Peer run: the MONAI tutorial U-Net on medseg-mem's split, with the same wall-clock training budget, CPU.

Example (the real benchmark: 15 minutes of training on the 2-core CPU)::

    python benchmarks/peer_monai_unet.py --minutes 15

What it does (WORK is ``--work``, default ``medseg-work/hippocampus``, the folder ``hippocampus.py`` prepares into):

* Data: medseg-mem's prepared task (WORK/prepared, or ``--prepared``) and its train/val/test split. The whole
  train volumes are held in memory, zero-padded at their end to one shape (the largest case's, each axis rounded
  up to a multiple of 16: 48x64x48 for the hippocampus); batches of ``--batch-size`` cases are drawn at random
  (seeded). No augmentation and no cropping: the tutorial's 96^3 random crops are larger than these volumes.
* Network and training as MONAI's spleen segmentation tutorial: ``monai.networks.nets.UNet(spatial_dims=3,
  channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)``, ``Adam`` at
  ``1e-4``, ``DiceLoss(to_onehot_y=True, softmax=True)``.
* Validation every ``--val-every`` steps and once at the end: mean foreground Dice on the val split with
  medseg-mem's metric; the best weights are kept and tested. Training steps stop when one more step and the
  final validation would no longer fit in ``--minutes``: loading the train split, every validation and the
  final one count in the budget (before the first validation its time is estimated from one val case).
* Test: each test case padded to a multiple of 16, one forward pass, argmax, cropped back (the prepared grid is
  the scan's own for the hippocampus: native spacing, no cropping); the first case once untimed (warm-up).
* Peak inference memory: medseg-mem's ``measure_peak`` (a fresh process) on the largest test case; the training
  peak in this process (data, network, Adam, activations). Rows (``source = peer``, variant ``monai-unet``) go to
  ``--results``, details to WORK/peer-runs/<run id>.json, the best weights to WORK/monai-unet/<run id>.pt.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import torch
from monai.losses import DiceLoss
from monai.networks.layers import Norm
from monai.networks.nets import UNet

from medseg_mem.data.cases import CaseStream, as_tensor, open_case
from medseg_mem.inference.metrics import dice_per_class
from medseg_mem.memory.measure import measure_peak
from medseg_mem.report.results import new_run_id
from medseg_mem.training.sampling import pad_to
from medseg_mem.training.seeding import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_common import (  # noqa: E402
    BudgetClock, OneLineParser, PeerRun, add_common_arguments, check_results, file_run, prepared_dataset,
    score_cases, training_peak,
)  # fmt: skip

PROG = "peer_monai_unet.py"
VARIANT = "monai-unet"
CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)
MULTIPLE = 16  # 2 ** len(STRIDES): every axis must divide by it
LR = 1e-4


def arguments(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="whole volumes per step [%(default)s]")
    parser.add_argument("--val-every", type=int, default=50, help="steps between validations [%(default)s]")
    args = parser.parse_args(argv)
    for name in ("batch_size", "val_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    return args


def build_unet(in_channels: int, num_classes: int):
    """The tutorial's U-Net."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, channels=CHANNELS,
                strides=STRIDES, num_res_units=2, norm=Norm.BATCH)  # fmt: skip


def rounded_up(shape: Sequence[int]) -> Tuple[int, ...]:
    """Each axis rounded up to a multiple of :data:`MULTIPLE`."""
    return tuple(-(-int(s) // MULTIPLE) * MULTIPLE for s in shape)


def load_split(dataset, split: str):
    """The whole split in memory: images ``(N, C, X, Y, Z)`` float32 and labels ``(N, 1, X, Y, Z)`` uint8, each
    zero-padded at its end to the split's largest extent per axis, rounded up to a multiple of 16."""
    cases = CaseStream(dataset, split)
    size = rounded_up(_largest(dataset, cases.ids))
    images, labels = zip(*(cases[i] for i in range(len(cases))))
    return torch.cat([pad_to(x, size) for x in images]), torch.cat([pad_to(y, size) for y in labels])


def _largest(dataset, ids: Sequence[str]) -> Tuple[int, int, int]:
    """The largest extent of each axis over the cases ``ids``."""
    shapes = [dataset.shape(i) for i in ids]
    return tuple(max(s[axis] for s in shapes) for axis in range(3))


def segment(net, image):
    """Label map ``(1, 1, X, Y, Z)`` of one image ``(1, C, X, Y, Z)``: padded to a multiple of 16, argmax, cropped."""
    size = image.shape[-3:]
    logits = net(pad_to(image, rounded_up(size)))
    return torch.argmax(logits, dim=1, keepdim=True)[..., : size[0], : size[1], : size[2]].to(torch.uint8)


def validate(net, dataset, split: str = "val") -> float:
    """Mean foreground Dice of ``net`` on ``split`` (medseg-mem's metric)."""
    net.eval()
    with torch.inference_mode():
        scores = [dice_per_class(segment(net, image), label, dataset.num_classes) for image, label in
                  CaseStream(dataset, split)]  # fmt: skip
    net.train()
    return float(torch.cat(scores).mean())


class Trainer:
    """Tutorial training within the budget: random batches, validation every ``val_every`` steps, best kept."""

    def __init__(self, dataset, args, clock: BudgetClock) -> None:
        self.dataset, self.args, self.clock = dataset, args, clock
        self.images, self.labels = load_split(dataset, "train")
        self.net = build_unet(dataset.in_channels, dataset.num_classes)
        self.optimizer = torch.optim.Adam(self.net.parameters(), LR)
        self.loss = DiceLoss(to_onehot_y=True, softmax=True)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.steps, self.step_seconds, self.val_seconds, self.history = 0, [], 0.0, []
        self.best_dice, self.best_state, self.best_step = -1.0, None, 0

    def run(self) -> None:
        """Train until one more step and the final validation would overrun the budget; validate at the end.

        Until the first validation has been timed, its cost is estimated from one val case's forward pass.
        """
        self.val_seconds = self.estimated_validation()
        while self.steps == 0 or self.clock.fits(self.mean_step() + self.val_seconds):
            self.step()
            if self.steps % self.args.val_every == 0:
                self.validate()
        if not self.history or self.history[-1][0] != self.steps:
            self.validate()

    def step(self) -> None:
        started = time.perf_counter()
        batch = torch.randint(len(self.images), (self.args.batch_size,), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.net(self.images[batch]), self.labels[batch].long())
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        self.step_seconds.append(time.perf_counter() - started)

    def validate(self) -> None:
        started = time.perf_counter()
        dice = validate(self.net, self.dataset)
        self.val_seconds = time.perf_counter() - started
        self.history.append((self.steps, round(dice, 4)))
        if dice > self.best_dice:
            self.best_dice, self.best_step, self.best_state = dice, self.steps, copy.deepcopy(self.net.state_dict())

    def estimated_validation(self) -> float:
        """Seconds a validation should take: one val case's forward pass (the second, warm) times the val cases."""
        cases = CaseStream(self.dataset, "val")
        self.net.eval()
        with torch.inference_mode():
            segment(self.net, cases[0][0])
            started = time.perf_counter()
            segment(self.net, cases[0][0])
            seconds = (time.perf_counter() - started) * len(cases)
        self.net.train()
        return seconds

    def mean_step(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds)


def memory_setup(weights: str, in_channels: int, num_classes: int, image):
    """Top-level (picklable) setup for ``measure_peak``: the trained U-Net and one image; returns its prediction."""
    net = build_unet(in_channels, num_classes)
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    net.eval()
    image = torch.as_tensor(image)
    return lambda: segment(net, image)


def case_loader(dataset):
    """``load(case_id) -> (image (1, C, X, Y, Z), label (1, 1, X, Y, Z))`` of a prepared case."""

    def load(case_id: str):
        image, label = open_case(dataset, case_id)
        return as_tensor(image)[None], as_tensor(label)[None]

    return load


def peer_run(trainer: Trainer, evaluation, memory, peak, clock: BudgetClock, run_id: str) -> PeerRun:
    """The results columns and the details of a finished run."""
    columns = {
        "seed": trainer.args.seed, "channels": "-".join(map(str, CHANNELS)), "loss": "dice",
        "package_version": f"monai-{version('monai')}", "inferer": "whole-volume", "precision": "fp32",
        "checkpointing": False, "channels_last": False, "inference_precision": "fp32",
    }  # fmt: skip
    details = {
        "network": "monai.networks.nets.UNet", "strides": STRIDES, "num_res_units": 2, "norm": "batch",
        "optimizer": "Adam", "lr": LR, "batch_size": trainer.args.batch_size, "val_every": trainer.args.val_every,
        "train_shape": list(trainer.images.shape), "seconds_per_step": trainer.mean_step(),
        "best_step": trainer.best_step, "best_val_dice": trainer.best_dice, "validations": trainer.history,
        "train_memory_method": peak.method, "train_cpu_seconds": round(clock.cpu_seconds, 1),
    }  # fmt: skip
    return PeerRun(VARIANT, evaluation, memory, peak.peak_bytes, trainer.steps, clock.elapsed, columns, details, run_id)


def main(argv=None) -> None:
    args = arguments(argv)
    check_results(args.results, PROG)
    dataset = prepared_dataset(args, PROG)
    seed_everything(args.seed)
    clock = BudgetClock(args.minutes)
    with training_peak() as peak:
        trainer = Trainer(dataset, args, clock)
        trainer.run()
    clock.stop()
    run_id = new_run_id(VARIANT)
    weights = args.work / "monai-unet" / f"{run_id}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.best_state, weights)
    trainer.net.load_state_dict(trainer.best_state)
    trainer.net.eval()
    evaluation = score_cases(lambda image: segment(trainer.net, image), case_loader(dataset), dataset.ids("test"),
                             dataset.num_classes)  # fmt: skip
    image = np.array(open_case(dataset, dataset.largest("test"))[0])[None]
    memory = measure_peak(memory_setup, (str(weights), dataset.in_channels, dataset.num_classes, image), "cpu")
    file_run(peer_run(trainer, evaluation, memory, peak, clock, run_id), dataset, args.results, args.work,
             args.minutes)  # fmt: skip


if __name__ == "__main__":
    main()
