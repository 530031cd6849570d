"""Lesion / nodule detection: connected components of a mask (or thresholded probability map)
with centroid (RAS mm), volume (mm^3), maximum diameter (mm) and intensity statistics."""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from MedAICommonLib.geometry import Geometry


def _max_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two voxel centres of a component (on its convex hull)."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 4:
        with contextlib.suppress(QhullError):  # a flat component keeps all its points
            points_mm = points_mm[ConvexHull(points_mm).vertices]
    if len(points_mm) > 3000:
        points_mm = points_mm[:: len(points_mm) // 3000 + 1]
    return float(pdist(points_mm).max())


def detect_lesions(
    mask_or_probability: np.ndarray,
    geometry: Geometry,
    intensity: np.ndarray | None = None,
    probability_threshold: float = 0.5,
    min_volume_mm3: float = 0.0,
) -> list[dict]:
    """Connected components (26-connectivity) of a KJI mask (or probability >= threshold).

    ``geometry`` (RAS or LPS; centroids are returned in RAS) gives voxel size and position.
    Returns one dict per lesion, largest first: ``label`` (1..n), ``voxels``, ``volume_mm3``,
    ``max_diameter_mm`` (between voxel centres), ``centroid_ras`` (mm), ``mean_intensity``,
    ``max_intensity`` (input unit; None without ``intensity``).
    """
    data = np.asarray(mask_or_probability)
    mask = data >= probability_threshold if np.issubdtype(data.dtype, np.floating) else data > 0
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    ras = geometry.to_space("RAS")
    voxel_mm3 = float(np.prod(geometry.spacing))
    lesions = []
    for index, slices in enumerate(ndimage.find_objects(components), start=1):
        local = components[slices] == index
        kji = np.argwhere(local) + np.array([s.start for s in slices])
        volume = len(kji) * voxel_mm3
        if volume < min_volume_mm3:
            continue
        points = ras.index_to_point(kji[:, ::-1].astype(float))
        values = intensity[tuple(kji.T)] if intensity is not None else None
        lesions.append(
            {
                "voxels": len(kji),
                "volume_mm3": volume,
                "max_diameter_mm": _max_diameter_mm(points),
                "centroid_ras": points.mean(axis=0),
                "mean_intensity": float(values.mean()) if values is not None else None,
                "max_intensity": float(values.max()) if values is not None else None,
            }
        )
    lesions.sort(key=lambda item: -item["volume_mm3"])
    for label, lesion in enumerate(lesions, start=1):
        lesion["label"] = label
    return lesions
