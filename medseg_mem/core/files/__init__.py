"""Files: atomic writes (:mod:`~medseg_mem.core.files.atomic`), SHA-256 sidecars (:mod:`~medseg_mem.core.files.digest`),
output checks (:mod:`~medseg_mem.core.files.writable`, :mod:`~medseg_mem.core.files.readable`), one writer per folder
(:mod:`~medseg_mem.core.files.output_lock`) and checkpoint I/O (:mod:`~medseg_mem.core.files.checkpoint`)."""
