"""The planner's validation phase of a training stage: what ``validate`` holds while the training state waits.

Every ``--val-every`` steps the training loop (``medseg_mem.training.loop.validate``) segments each validation case
whole with the stage's network in eval mode: the case's image and label, the stage's input at its resolution
(downsampled, or with the guidance channels), the network's logits of the whole volume (a slab stage stitches them
slab by slab), their int64 argmax and the boolean maps of the Dice. Meanwhile the training state stays resident:
the weights, the optimizer's states, the last step's gradients (``zero_grad(set_to_none=True)`` runs at the next
step) and the last batch. On small volumes this is the stage's peak (on the embedded default, ``full``'s
validation pass is 181 MiB of slow-convolution buffers, its training step 120 MiB); on large ones a slab stage's
full-volume logits and argmax can be (``K * 4 + 8`` bytes a voxel).
"""

from __future__ import annotations

from typing import Tuple

from medseg_mem.memory.meta import FLOAT_BYTES, backend_transient

LABEL_BYTES = 1


def trace_validation(stage, net, shape, classes: int, model, device: str, channels_last: bool) -> Tuple[int, object]:
    """Trace one validation case of ``stage`` (``net``: its float32 ``meta`` network) at the image ``shape``
    ``(C, X, Y, Z)``; return ``(resident bytes of the case and the gradients, trace)``.

    The training state's own resident bytes (weights, optimizer states, the batch) are the caller's.
    """
    import torch

    from medseg_mem.inference.slab import representative_slabs
    from medseg_mem.memory.trace import LiveSetTracer

    net.eval()
    image = torch.zeros((1, *shape), device="meta")
    label = torch.zeros((1, 1, *shape[1:]), dtype=torch.uint8, device="meta")
    existing = [image, label, *net.parameters(), *net.buffers()]
    transient = backend_transient(device, channels_last)
    with torch.inference_mode(), representative_slabs(), \
            LiveSetTracer(existing, [net], transient=transient) as tracer:  # fmt: skip
        x, y = stage.inputs(image, label, model, classes)
        logits = stage.forward(net, x, model)
        del x
        prediction = logits.argmax(dim=1, keepdim=True)
        del logits
        maps = (prediction == 1, y == 1)  # dice_per_class: one class's boolean maps at a time
        (maps[0] & maps[1]).sum()
        del maps, prediction, y
    gradients = sum(p.numel() * FLOAT_BYTES for p in net.parameters())
    case = image.numel() * FLOAT_BYTES + label.numel() * LABEL_BYTES
    return gradients + case, tracer.trace
