"""Pictures of a segmentation over its image: three planes through the foreground with outlines.

Modules: :mod:`~medseg_mem.overlay.planes` (where to cut, which voxels outline a class: numpy only),
:mod:`~medseg_mem.overlay.figure` (the PNG, matplotlib), :mod:`~medseg_mem.overlay.show` (``medseg-mem show``:
a run's test cases segmented and drawn with their ground truth). ``predict --overlay`` draws with
:func:`~medseg_mem.overlay.figure.draw_overlay` beside each label map it writes.
"""
