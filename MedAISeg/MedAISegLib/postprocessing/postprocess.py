"""Post-processing of label maps (KJI integer arrays, any geometry): per segment, keep the
largest component, fill holes, remove islands below a volume, smooth. Sizes are in mm^3 / mm."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _labels_of(labels: np.ndarray, only) -> list[int]:
    values = [int(v) for v in np.unique(labels) if v != 0]
    return values if only is None else [v for v in values if v in set(only)]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities not connected to the volume border (3D), then per axial slice."""
    filled = ndimage.binary_fill_holes(mask)
    for k in range(filled.shape[0]):
        filled[k] = ndimage.binary_fill_holes(filled[k])
    return filled


def remove_small_islands(mask: np.ndarray, min_volume_mm3: float, spacing) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_volume_mm3`` (spacing in mm, i/j/k)."""
    voxel = float(np.prod(spacing))
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel()) * voxel
    keep = sizes >= min_volume_mm3
    keep[0] = False
    return keep[components]


def smooth(mask: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    """Smooth a binary mask: Gaussian of ``sigma_mm`` (anisotropic in voxels), thresholded at 0.5."""
    sigma_vox = [sigma_mm / s for s in (spacing[2], spacing[1], spacing[0])]
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma_vox) >= 0.5


def postprocess(
    labels: np.ndarray,
    spacing,
    largest_component: bool = False,
    holes: bool = False,
    min_island_mm3: float = 0.0,
    smoothing_mm: float = 0.0,
    only=None,
) -> np.ndarray:
    """Apply the chosen operations to every label (or those in ``only``); later labels win overlaps
    created by smoothing. Returns a new array of the same dtype."""
    out = np.zeros_like(labels)
    untouched = set(_labels_of(labels, None)) - set(_labels_of(labels, only))
    for value in untouched:
        out[labels == value] = value
    for value in _labels_of(labels, only):
        mask = labels == value
        if min_island_mm3 > 0:
            mask = remove_small_islands(mask, min_island_mm3, spacing)
        if largest_component:
            mask = keep_largest_component(mask)
        if holes:
            mask = fill_holes(mask)
        if smoothing_mm > 0:
            mask = smooth(mask, smoothing_mm, spacing)
        out[mask] = value
    return out
