"""How well can any slab-wise classifier do on the embedded default? The best achievable patch Dice.

A slab-wise network sees one 16-slice slab at a time. On SyntheticRods the two rods look the same in every
slice, so all a slab can tell about a rod is which of its slices the rod covers: ``(first, last)`` inside the
slab (whether an end is visible, and where). This script generates the task's cases with the task's own
generator (:func:`medseg_mem.data.synthetic.make_case`), pools, per such slab feature, how many voxels belong
to the long and to the short rod, and finds the labelling of features (a threshold on the share of long-rod
voxels) that maximises the mean foreground Dice over all pooled cases. That is an upper bound for the patch
variant on this task, whatever it is trained with; the full and cascade variants see whole rods and are not
bounded by it.

Usage:
    python benchmarks/rods_patch_ceiling.py                 # 2000 cases, slab 16
    python benchmarks/rods_patch_ceiling.py --slab 8 --cases 500
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def slab_features(label: np.ndarray, slab: int):
    """Yield ``((first, last), class, voxels)`` for each rod's part inside each slab along the last axis."""
    for value in (1, 2):
        covered = np.flatnonzero((label == value).any(axis=(0, 1)))
        section = int((label[..., covered[0]] == value).sum())
        for start in range(0, label.shape[-1], slab):
            inside = covered[(covered >= start) & (covered < start + slab)]
            if inside.size:
                yield (int(inside[0] - start), int(inside[-1] - start)), value, section * inside.size


def ceiling(cases: int, slab: int, seed: int):
    """``(mean Dice, long Dice, short Dice, threshold)`` of the best feature labelling over ``cases`` cases."""
    from medseg_mem.data.synthetic import make_case

    voxels, totals = defaultdict(lambda: np.zeros(2)), np.zeros(2)
    for index in range(cases):
        for feature, value, count in slab_features(make_case(seed, index)[1], slab):
            voxels[feature][value - 1] += count
            totals[value - 1] += count
    table = np.array(list(voxels.values()))
    share = table[:, 0] / table.sum(axis=1)
    best = (0.0, 0.0, 0.0, 0.0)
    for threshold in np.unique(np.r_[share, 1.01]):
        long_pred = share >= threshold
        dice_long = 2 * table[long_pred, 0].sum() / (table[long_pred].sum() + totals[0])
        dice_short = 2 * table[~long_pred, 1].sum() / (table[~long_pred].sum() + totals[1])
        if (dice_long + dice_short) / 2 > best[0]:
            best = ((dice_long + dice_short) / 2, dice_long, dice_short, float(threshold))
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases generated and pooled [2000]")
    parser.add_argument("--slab", type=int, default=16, help="slab thickness [16]")
    parser.add_argument("--seed", type=int, default=0, help="task seed [0]")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.slab < 1:
        parser.error(f"--cases and --slab must be positive; got {args.cases} and {args.slab}")
    mean, long_dice, short_dice, threshold = ceiling(args.cases, args.slab, args.seed)
    print(f"SyntheticRods, {args.cases} cases (seed {args.seed}), slab {args.slab}: best slab-wise labelling "
          f"mean Dice {mean:.3f} (long {long_dice:.3f}, short {short_dice:.3f}; long where its share >= {threshold:.2f})")


if __name__ == "__main__":
    main()
