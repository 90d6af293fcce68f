"""What the MONAI bundles in ``bundles/`` call through ``_target_`` (``medseg_mem.bundle.train``, ``.infer``,
``.require_trained``): :mod:`~medseg_mem.bundle.workflow`. A front end like :mod:`medseg_mem.cli`."""

from medseg_mem.bundle.workflow import infer, require_trained, train

__all__ = ["infer", "require_trained", "train"]
