"""The ground floor: what every other floor may use and that imports none of them.

Names (:mod:`~medseg_mem.core.names`), errors (:mod:`~medseg_mem.core.errors`), byte units
(:mod:`~medseg_mem.core.units`), the settings of every command (:mod:`~medseg_mem.core.config`,
:mod:`~medseg_mem.core.inference_config`, :mod:`~medseg_mem.core.prepare_config`), the device
(:mod:`~medseg_mem.core.device`), precision (:mod:`~medseg_mem.core.precision`) and files (:mod:`medseg_mem.core.files`:
atomic writes, digests, locks, checkpoint I/O). Importing this package does not import torch.
"""
