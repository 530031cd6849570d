"""Evaluation of a segmentation against a reference, per segment: Dice, Jaccard, HD95, average
surface distance (ASD), sensitivity, specificity, volume difference.

Both label maps are KJI arrays on one grid (spacing in mm, i/j/k); :func:`evaluate_labelmaps` takes
them with their geometries and resamples the prediction onto the reference grid (nearest
neighbour, in physical space) when the grids differ. Surface distances follow MONAI's definition
(edges = mask XOR its 6-connected erosion, nearest-edge Euclidean distances in mm; HD95 = the
larger of the two directed 95th percentiles; ASD = mean over both directions' distances).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from MedAICommonLib import notices
from MedAICommonLib.geometry import Geometry

METRICS = (
    "dice",
    "jaccard",
    "hd95_mm",
    "asd_mm",
    "sensitivity",
    "specificity",
    "volume_reference_mm3",
    "volume_prediction_mm3",
    "volume_difference_mm3",
    "volume_difference_percent",
)


def _edges(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    edges = padded ^ ndimage.binary_erosion(padded)
    return edges[1:-1, 1:-1, 1:-1]


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from prediction edge voxels to the nearest reference edge voxel, and back."""
    scale = np.array([spacing[2], spacing[1], spacing[0]], float)  # KJI order
    pred_pts = np.argwhere(_edges(prediction)) * scale
    ref_pts = np.argwhere(_edges(reference)) * scale
    if len(pred_pts) == 0 or len(ref_pts) == 0:
        return np.array([]), np.array([])
    return cKDTree(ref_pts).query(pred_pts)[0], cKDTree(pred_pts).query(ref_pts)[0]


def binary_metrics(prediction: np.ndarray, reference: np.ndarray, spacing, percentile: float = 95.0) -> dict:
    """All :data:`METRICS` for two boolean KJI masks on one grid (spacing mm, i/j/k).

    Distances are NaN when either mask is empty; Dice/Jaccard are 1 when both are empty.
    """
    p, r = prediction.astype(bool), reference.astype(bool)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    tn = int(p.size - tp - fp - fn)
    voxel = float(np.prod(spacing))
    both_empty = tp + fp + fn == 0
    d_pr, d_rp = surface_distances(p, r, spacing)
    if len(d_pr):
        hd95 = max(float(np.percentile(d_pr, percentile)), float(np.percentile(d_rp, percentile)))
        asd = float(np.concatenate([d_pr, d_rp]).mean())
    else:
        hd95 = asd = float("nan")
    vol_r, vol_p = (tp + fn) * voxel, (tp + fp) * voxel
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "jaccard": 1.0 if both_empty else tp / (tp + fp + fn),
        "hd95_mm": hd95,
        "asd_mm": asd,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "volume_reference_mm3": vol_r,
        "volume_prediction_mm3": vol_p,
        "volume_difference_mm3": vol_p - vol_r,
        "volume_difference_percent": 100.0 * (vol_p - vol_r) / vol_r if vol_r else float("nan"),
    }


def _listed(names) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def match_segments(reference_segments: dict, prediction_segments: dict) -> list[tuple[str, int, int]]:
    """Pair segments given as ``{label value: name}`` by name only (case-insensitive, spaces trimmed): a
    named segmentation is never paired with a label map's numbers by order or value. Returns
    ``(reference name, reference label, prediction label)``; a reference segment with no partner gets
    prediction label 0 (an empty prediction). Unmatched names on either side are a warning; no match at
    all is a ``ValueError`` listing both name sets and how to map them."""

    def key(name) -> str:
        return str(name).strip().lower()

    by_name = {key(n): v for v, n in prediction_segments.items()}
    pairs = [(str(name), int(value), int(by_name.get(key(name), 0))) for value, name in reference_segments.items()]
    if reference_segments and prediction_segments and not any(p for _, _, p in pairs):
        raise ValueError(
            f"No segment of the prediction has the name of a reference segment: the reference has "
            f"{_listed(reference_segments.values())}; the prediction has {_listed(prediction_segments.values())}. "
            "Segments are paired by name only; name a label map's values (medai evaluate --label-names "
            "'1=spleen,2=kidney_right' or a file of 'value name' lines), or rename the segments so they match."
        )
    missing = [name for name, _, p in pairs if not p]
    extra = [n for n in prediction_segments.values() if key(n) not in {key(r) for r in reference_segments.values()}]
    if missing or extra:
        notices.warn(
            f"Segments paired by name only: reference segment(s) without a prediction of the same name "
            f"(scored against an empty prediction): {_listed(missing) or 'none'}; prediction segment(s) "
            f"not in the reference (ignored): {_listed(extra) or 'none'}."
        )
    return pairs


def evaluate_labelmaps(
    reference: np.ndarray,
    reference_geometry: Geometry,
    prediction: np.ndarray,
    prediction_geometry: Geometry,
    reference_segments: dict | None = None,
    prediction_segments: dict | None = None,
    percentile: float = 95.0,
) -> dict:
    """Per-segment metrics ``{reference segment name: {metric: value}}`` (see :data:`METRICS`).

    Segments are ``{label value: name}`` (default: the values themselves as names), paired by name only
    (:func:`match_segments`). The prediction is resampled onto the reference grid in physical space when
    the grids differ.
    """
    reference_geometry = reference_geometry.with_shape(reference.shape)
    prediction_geometry = prediction_geometry.with_shape(prediction.shape)
    if not reference_geometry.same_grid(prediction_geometry):
        image = sitk.GetImageFromArray(np.ascontiguousarray(prediction.astype(np.uint16)))
        prediction_geometry.apply_to_sitk(image)
        ref = sitk.Image([int(s) for s in reference.shape[::-1]], sitk.sitkUInt16)
        reference_geometry.apply_to_sitk(ref)
        prediction = sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    reference_segments = reference_segments or {int(v): str(int(v)) for v in np.unique(reference) if v}
    prediction_segments = prediction_segments or {int(v): str(int(v)) for v in np.unique(prediction) if v}
    spacing = reference_geometry.spacing
    results = {}
    for name, ref_value, pred_value in match_segments(reference_segments, prediction_segments):
        pred_mask = prediction == pred_value if pred_value else np.zeros(reference.shape, bool)
        metrics = binary_metrics(pred_mask, reference == ref_value, spacing, percentile)
        metrics.update({"reference_label": ref_value, "prediction_label": pred_value})
        results[name] = metrics
    return results
