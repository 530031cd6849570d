"""Classical segmentation on SimpleITK images (LPS): manual threshold, Otsu, region growing.

Each function returns a uint8 label map (KJI array) on the input's grid: 0 background, 1 (or
1..n for multi-class Otsu) foreground. Thresholds are in the image's unit (HU for CT).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

REGION_GROWING_METHODS = ("connected", "confidence")


def threshold(array: np.ndarray, lower: float | None = None, upper: float | None = None) -> np.ndarray:
    """1 where ``lower <= value <= upper`` (either bound may be None), else 0; uint8."""
    if lower is None and upper is None:
        raise ValueError("Give a lower and/or an upper threshold (image units, e.g. HU).")
    a = np.asarray(array)
    mask = np.ones(a.shape, dtype=bool)
    if lower is not None:
        mask &= a >= lower
    if upper is not None:
        mask &= a <= upper
    return mask.astype(np.uint8)


def otsu(array: np.ndarray, classes: int = 2, bins: int = 256) -> tuple[np.ndarray, list[float]]:
    """Otsu thresholding into ``classes`` classes (labels 0..classes-1); returns labels and thresholds.

    Two classes use ITK's OtsuThresholdImageFilter, more use OtsuMultipleThresholdsImageFilter.
    """
    if classes < 2:
        raise ValueError("Otsu needs at least 2 classes")
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    f = sitk.OtsuMultipleThresholdsImageFilter()
    f.SetNumberOfThresholds(classes - 1)
    f.SetNumberOfHistogramBins(bins)
    labels = sitk.GetArrayFromImage(f.Execute(image)).astype(np.uint8)
    return labels, [float(t) for t in f.GetThresholds()]


def region_growing(
    image: sitk.Image,
    seeds_ijk,
    method: str = "connected",
    lower: float | None = None,
    upper: float | None = None,
    multiplier: float = 2.5,
    iterations: int = 3,
    radius: int = 1,
) -> np.ndarray:
    """Region growing from seed voxels ``seeds_ijk`` ((N, 3) integer i, j, k) into a uint8 mask.

    ``connected``: voxels connected to a seed with ``lower <= value <= upper`` (both required);
    ``confidence``: ITK's ConfidenceConnected (mean +- ``multiplier`` * sd of the seed
    neighbourhood of ``radius`` voxels, re-estimated ``iterations`` times).
    """
    seeds = [tuple(int(round(v)) for v in s) for s in np.atleast_2d(np.asarray(seeds_ijk))]
    size = image.GetSize()
    seeds = [s for s in seeds if all(0 <= s[a] < size[a] for a in range(3))]
    if not seeds:
        raise ValueError("No seed point lies inside the volume; place seeds on the structure to segment.")
    if method == "connected":
        if lower is None or upper is None:
            raise ValueError("Connected-threshold region growing needs lower and upper thresholds.")
        out = sitk.ConnectedThreshold(image, seedList=seeds, lower=float(lower), upper=float(upper), replaceValue=1)
    elif method == "confidence":
        out = sitk.ConfidenceConnected(
            image,
            seedList=seeds,
            numberOfIterations=int(iterations),
            multiplier=float(multiplier),
            initialNeighborhoodRadius=int(radius),
            replaceValue=1,
        )
    else:
        raise ValueError(f"Unknown region growing method {method!r}; use one of {REGION_GROWING_METHODS}")
    return sitk.GetArrayFromImage(out).astype(np.uint8)
