"""How long a test's subprocess may take before it counts as hung.

Far beyond any child's length even on a loaded machine (the suite runs 4-7 times slower beside another CPU-heavy
job), so no test depends on the machine's speed: no test asserts a duration.
"""

#: Seconds after which a test's subprocess is stopped as hung.
HANG_GUARD_S = 3600
