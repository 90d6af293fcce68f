"""medseg-mem: which 3D U-Net variant fits your memory, and what it costs in accuracy and time.

Importing the package is cheap: torch and MONAI are imported only by the modules that need them.
"""

__version__ = "0.1.0"
