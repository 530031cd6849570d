"""Fixed-image sample points for intensity metrics, shared by MedAI's registration paths."""

from __future__ import annotations

import numpy as np


def sample_fixed_voxels(
    shape_kji, shrink: int, fixed_mask, sampling_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """KJI indices (n, 3) of the fixed grid at one pyramid level: every ``shrink``-th voxel, inside
    ``fixed_mask`` (KJI, non-zero = inside) if given, then a random subset of ``sampling_fraction``
    (at least 500 points)."""
    grid = [np.arange(0, n, shrink) for n in shape_kji]
    kji = np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, 3)
    if fixed_mask is not None:
        kji = kji[np.asarray(fixed_mask)[kji[:, 0], kji[:, 1], kji[:, 2]] != 0]
        if len(kji) < 50:
            raise ValueError("The fixed mask leaves fewer than 50 samples; give a larger mask.")
    count = max(500, int(sampling_fraction * len(kji)))
    if count < len(kji):
        kji = kji[rng.choice(len(kji), count, replace=False)]
    return kji


def histogram_bins(bins: int, samples: int, per_cell: float = 1.0) -> int:
    """Joint-histogram bins per side for ``samples`` points: ``bins``, fewer when the bins x bins
    histogram would hold under ``per_cell`` samples per cell (at least 8). A sparse histogram makes MI
    grow as samples leave the overlap, which pulls small images off each other."""
    return int(max(8, min(bins, np.sqrt(samples / per_cell))))
