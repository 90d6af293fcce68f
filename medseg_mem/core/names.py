"""One source of truth for the names users type: variants, losses, readers, guidance encodings, default paths.

Kept free of torch/MONAI imports so the CLI can build its ``--help`` instantly.
"""

from __future__ import annotations

from pathlib import Path

VARIANT_NAMES = ("full", "patch", "cascade")
#: ``predict --out-of-core``: by the budget, always (patch, cascade), never.
OUT_OF_CORE_NAMES = ("auto", "always", "never")
#: The variants most accurate first (thesis, Tables 4.1-4.4): ``--variant auto``'s order without results.
THESIS_ORDER = ("full", "cascade", "patch")
LOSS_NAMES = ("dice", "dice_ce")
READER_NAMES = ("nibabel", "itk")
GUIDANCE_NAMES = ("label", "onehot")
DEVICE_NAMES = ("auto", "cpu", "cuda")
#: Training precision (autocast dtype); ``fp32`` trains without autocast.
PRECISION_NAMES = ("fp32", "bf16", "fp16")
#: Largest ``--overlap`` of consecutive slabs (a fraction of the slab thickness), as nnU-Net's 0.5.
MAX_OVERLAP = 0.5
#: Most training steps a stage may be asked for (torch's samplers index the samples with machine integers).
MAX_STEPS = 10**9
#: Learning-rate schedules: constant, or nnU-Net's polynomial decay ``lr * (1 - step / steps) ** 0.9``.
LR_SCHEDULE_NAMES = ("constant", "poly")
#: Class weights of the loss: none, or ``sqrt(max count / count)`` from the training split's labels.
CLASS_WEIGHT_NAMES = ("none", "balanced")
#: Fewest U-Net levels ``--deep-supervision`` accepts: the top one and a decoder level below it to supervise.
DEEP_SUPERVISION_LEVELS = 3
#: Generated tasks ``prepare --synthetic`` writes: the embedded default, and a BraTS-sized capacity task.
SYNTHETIC_NAMES = ("rods", "brats-like")
#: Optimizers of ``run --optimizer``: Adam (thesis), or SGD with Nesterov momentum 0.99 (nnU-Net).
OPTIMIZER_NAMES = ("adam", "sgd")
#: Tensors of the weights' size each optimizer keeps per parameter (what the memory planner counts): Adam its
#: exp_avg and exp_avg_sq, SGD its momentum buffer.
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}
#: Data augmentation of ``run --augment``: none, or nnU-Net's spatial, intensity and mirroring transforms.
AUGMENT_NAMES = ("none", "nnunet")
#: Where the cascade's stage-2 training guidance comes from: the ground truth (thesis), or stage 1's predictions
#: on cases it did not train on (nnU-Net's cascade: out-of-fold).
STAGE2_GUIDANCE_NAMES = ("truth", "predicted")

DEFAULT_WORKDIR = Path("medseg-work")
DEFAULT_PREPARED = DEFAULT_WORKDIR / "prepared"
DEFAULT_RESULTS = DEFAULT_WORKDIR / "results.csv"
DEFAULT_RUNS = DEFAULT_WORKDIR / "runs"
#: MONAI Label's app folder (``medseg-mem label``): its main.py, logs and the runs its train tasks write.
DEFAULT_LABEL_APP = DEFAULT_WORKDIR / "label"

#: ``dataset.json`` name of the embedded default task (medseg_mem.data.synthetic); it has its own run profile.
EMBEDDED_DATASET = "SyntheticRods"
