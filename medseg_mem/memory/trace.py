"""Count the bytes a computation keeps alive, op by op, without allocating them (the ``meta`` device).

:class:`LiveSetTracer` is a ``TorchDispatchMode``: every aten op's outputs are registered by storage, and a weak
reference finalizer releases a storage when the last tensor using it dies, exactly when PyTorch would free it.
Views and in-place ops share their base's storage and add nothing; tensors that existed before tracing
(weights, the input) are not counted. Bytes allocated while a *tagged* network runs its forward are kept apart
("inside") from the rest ("outside": resampled volumes, stitched outputs, guidance), so the planner can scale
only the network part by the device's calibration multiplier. What a backend allocates while an op runs and frees
before it returns (the CPU's slow-convolution column buffer, :mod:`medseg_mem.memory.backend`) is no tensor: a
``transient`` callback gives it per op, and it is counted at that op only ("transient").
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class Trace:
    """Live bytes after each traced op, split into network-internal and other tensors.

    Args:
        inside: live bytes allocated by tagged networks' forwards, one entry per op.
        outside: live bytes allocated elsewhere, one entry per op.
        transient: bytes the backend holds only while the op runs (empty: none traced).
    """

    inside: List[int] = field(default_factory=list)
    outside: List[int] = field(default_factory=list)
    transient: List[int] = field(default_factory=list)

    def peak(self, multiplier: float = 1.0) -> float:
        """Worst ``outside + multiplier * inside + transient`` over the computation (0 for an empty trace)."""
        extra = self.transient or [0] * len(self.inside)
        return max((o + multiplier * i + t for o, i, t in zip(self.outside, self.inside, extra)), default=0.0)

    def transient_peak(self) -> int:
        """The largest backend temporary of a single op."""
        return max(self.transient, default=0)

    def inside_peak(self) -> int:
        """Worst network-internal live bytes."""
        return max(self.inside, default=0)


def storage_key(tensor: torch.Tensor) -> int:
    """Identity of the storage behind ``tensor`` (shared by its views)."""
    return tensor.untyped_storage()._cdata


class LiveSetTracer(TorchDispatchMode):
    """Dispatch mode that records the live bytes of every storage allocated under it.

    Args:
        existing: tensors alive before tracing (weights, inputs); their storages are never counted.
        networks: modules whose forward allocations count as "inside"; with ``all_inside`` everything does.
        all_inside: count every allocation as "inside" (used for training steps and calibration).
        transient: ``(func, args, out) -> bytes`` the backend holds while that op runs (default: none).

    Example:
        >>> net = torch.nn.Conv3d(1, 4, 3, padding=1, device="meta")
        >>> x = torch.zeros(1, 1, 8, 8, 8, device="meta")
        >>> with LiveSetTracer([x, *net.parameters()], [net]) as tracer, torch.inference_mode():
        ...     y = net(x)
        >>> tracer.trace.peak()
        8192.0
    """

    def __init__(
        self, existing: Iterable[torch.Tensor] = (), networks: Iterable[torch.nn.Module] = (), all_inside: bool = False,
        transient: Optional[Callable] = None,
    ) -> None:
        super().__init__()
        self.trace = Trace()
        self._transient = transient
        self._ignored = {storage_key(t) for t in existing}
        self._sizes, self._refs = {}, {}
        self._live = [0, 0]  # outside, inside
        self._depth = 1 if all_inside else 0
        self._handles = [h for net in networks for h in self._hook(net)]

    def _hook(self, net: torch.nn.Module) -> Tuple:
        """Forward hooks that mark the tagged network as running."""
        return (
            net.register_forward_pre_hook(lambda *_: self._enter()),
            net.register_forward_hook(lambda *_: self._leave()),
        )

    def _enter(self) -> None:
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._register(tensor)
        self.trace.outside.append(self._live[0])
        self.trace.inside.append(self._live[1])
        if self._transient is not None:
            self.trace.transient.append(int(self._transient(func, args, out)))
        return out

    def _register(self, tensor: torch.Tensor) -> None:
        """Count a new storage once and release it when its last tensor dies."""
        key = storage_key(tensor)
        if key in self._ignored:
            return
        if key not in self._sizes:
            where = 1 if self._depth > 0 else 0
            self._sizes[key] = (where, tensor.untyped_storage().nbytes())
            self._refs[key] = 0
            self._live[where] += self._sizes[key][1]
        self._refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            where, nbytes = self._sizes.pop(key)
            del self._refs[key]
            self._live[where] -= nbytes
