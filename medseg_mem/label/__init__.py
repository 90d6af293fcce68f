"""Serve medseg-mem's trained runs to 3D Slicer through MONAI Label (the optional ``label`` extra).

MONAI Label (``monailabel``) runs a REST server that 3D Slicer's and OHIF's MONAI Label modules talk to. The app
here gives it one infer task per served run's variant (:mod:`~medseg_mem.label.infer`: medseg-mem's own predict
path, a label map in the scan's shape and affine), one train task per variant that trains on the labels the server
has received and makes the next inference use the new run (:mod:`~medseg_mem.label.train`, the work itself in
:mod:`~medseg_mem.label.retrain`), and a next-sample strategy that offers the scan the model is least sure of
(:mod:`~medseg_mem.label.strategy`). :mod:`~medseg_mem.label.server` writes the app folder MONAI Label needs and
the command that starts it; ``medseg-mem label`` runs it.

Only the task modules and :mod:`~medseg_mem.label.app` import ``monailabel``; the rest of medseg-mem never does.

Example:
    >>> # pip install 'medseg-mem[label]'
    >>> # medseg-mem label --studies my_scans_copy --run medseg-work/runs/<run id>  # doctest: +SKIP
"""

#: The line a user sees when the extra is missing.
MISSING = "MONAI Label is not installed: pip install 'medseg-mem[label]'"
