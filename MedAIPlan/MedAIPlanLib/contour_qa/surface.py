"""Surface voxels, surface distances and the surface Dice at a tolerance (Nikolov et al. 2018).

Masks are boolean KJI arrays on one grid; ``spacing`` is (i, j, k) in mm and may be anisotropic. The surface
of a mask is its voxels that have a 6-neighbour outside it (mask XOR its 6-connected erosion, the grid border
counting as outside), the definition :mod:`MedAISegLib.postprocessing.evaluation` uses for HD95. Distances are Euclidean
distances in mm between surface-voxel centres, from exact distance transforms (``scipy.ndimage``) on the
real spacing, computed on the bounding box of both masks (plus one voxel), which gives the same numbers as
on the whole grid.

Surface Dice at tolerance tau: ``(|S_A within tau of S_B| + |S_B within tau of S_A|) / (|S_A| + |S_B|)``,
each surface voxel standing for an equal area (the voxel form of Nikolov's surfel areas).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean KJI mask: voxels of the mask with a 6-neighbour outside it."""
    padded = np.pad(np.asarray(mask, bool), 1)
    return (padded & ~ndimage.binary_erosion(padded))[1:-1, 1:-1, 1:-1]


def union_box(*masks: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """The KJI slices of the bounding box of all ``masks`` grown by ``margin`` voxels (None if all empty)."""
    union = np.zeros(masks[0].shape, bool)
    for m in masks:
        union |= m
    if not union.any():
        return None
    box = []
    for axis in range(3):
        present = np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, union.shape[axis])))
    return tuple(box)


def surface_distances_mm(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``, and back.

    Empty arrays when either mask is empty. ``spacing``: (i, j, k) mm.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"The two masks have different shapes {a.shape} and {b.shape}; put them on one grid.")
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    box = union_box(a, b)
    a, b = a[box], b[box]
    sa, sb = surface(a), surface(b)
    sampling = tuple(float(s) for s in np.asarray(spacing, float)[::-1])  # KJI order
    to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return to_b[sa], to_a[sb]


def surface_dice(
    a: np.ndarray,
    b: np.ndarray,
    spacing,
    tolerance_mm: float = 2.0,
    distances: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Surface Dice of two boolean KJI masks at ``tolerance_mm`` (1.0 when both are empty, 0.0 when one is).

    ``distances``: the result of :func:`surface_distances_mm` for these masks, to avoid computing it again.
    """
    if not tolerance_mm >= 0 or not np.isfinite(tolerance_mm):
        raise ValueError(f"The surface-Dice tolerance must be a finite distance >= 0 mm, got {tolerance_mm}.")
    a_any, b_any = bool(np.any(a)), bool(np.any(b))
    if not a_any and not b_any:
        return 1.0
    if not a_any or not b_any:
        return 0.0
    d_ab, d_ba = distances if distances is not None else surface_distances_mm(a, b, spacing)
    return float(
        (np.count_nonzero(d_ab <= tolerance_mm) + np.count_nonzero(d_ba <= tolerance_mm)) / (len(d_ab) + len(d_ba))
    )
