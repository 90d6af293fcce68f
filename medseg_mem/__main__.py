"""``python -m medseg_mem ...``: the ``medseg-mem`` command line, for launchers that take a module
(``torchrun -m``, ``/usr/bin/time python -m``)."""

from medseg_mem.cli import main

if __name__ == "__main__":
    main(prog_name="medseg-mem")
