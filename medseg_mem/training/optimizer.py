"""The optimizer of a stage: Adam (thesis), or SGD with Nesterov momentum 0.99 (nnU-Net), ``--optimizer``.

nnU-Net trains with ``torch.optim.SGD(lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)`` and the
polynomial learning-rate decay (``--lr-schedule poly``); Adam keeps the thesis's settings (no weight decay).
A run that gives no ``--lr`` trains SGD at nnU-Net's 1e-2 (:func:`default_lr`), Adam at its profile's rate.
Both optimizers' states (Adam's two moment estimates, SGD's momentum buffer) are in every ``last.pt``, so
``--resume`` continues either bit for bit. torch is imported only when an optimizer is built.

Example:
    >>> default_lr("sgd", 3e-4), default_lr("adam", 3e-4)
    (0.01, 0.0003)
"""

from __future__ import annotations

from typing import Iterable

SGD_LR = 1e-2
SGD_MOMENTUM = 0.99
SGD_WEIGHT_DECAY = 3e-5


def default_lr(optimizer: str, profile_lr: float) -> float:
    """The learning rate of a run that gives no ``--lr``: nnU-Net's 1e-2 for SGD, the profile's for Adam."""
    return SGD_LR if optimizer == "sgd" else profile_lr


def build_optimizer(name: str, parameters: Iterable, lr: float):
    """``torch.optim.Adam(lr)`` for ``"adam"``; nnU-Net's Nesterov SGD for ``"sgd"``.

    Args:
        name: ``TrainConfig.optimizer``.
        parameters: the network's parameters.
        lr: the base learning rate (the schedule sets each step's rate).
    """
    import torch

    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=SGD_WEIGHT_DECAY)
    return torch.optim.Adam(parameters, lr=lr)
