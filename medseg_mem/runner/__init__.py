"""``medseg-mem run``: train each variant's stages, evaluate them on the test split and file the rows.

:mod:`~medseg_mem.runner.run` (:func:`~medseg_mem.runner.run.run_variants`), :mod:`~medseg_mem.runner.variant`
(the stages of one variant), :mod:`~medseg_mem.runner.evaluation` (test split, memory, result rows),
:mod:`~medseg_mem.runner.settings` (profiles and ``run.json``), :mod:`~medseg_mem.runner.guard` and
:mod:`~medseg_mem.runner.auto` (the memory promise), :mod:`~medseg_mem.runner.resume`,
:mod:`~medseg_mem.runner.out_of_fold`, :mod:`~medseg_mem.runner.launch` (torchrun).
"""
