"""Preprocessing filters on SimpleITK images (LPS geometry kept as is): edge-preserving diffusion,
CLAHE, histogram equalisation, N4 bias-field correction, windowing/normalisation, resampling.

Every function returns a new image and never modifies its input. Intensities keep their unit
(HU for CT) unless the function says otherwise; spacings are in mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

DENOISE_METHODS = ("nlm", "anisotropic", "curvature", "clahe", "histogram", "n4")


def gradient_anisotropic_diffusion(
    image: sitk.Image, iterations: int = 5, conductance: float = 1.0, time_step: float | None = None
) -> sitk.Image:
    """Perona-Malik gradient anisotropic diffusion (edge-preserving smoothing); float32 out.

    ``time_step`` defaults to the stable ``min(spacing) / 2**(dim + 1)`` (mm units, as ITK wants).
    """
    time_step = min(image.GetSpacing()) / 2 ** (image.GetDimension() + 1) if time_step is None else time_step
    return sitk.GradientAnisotropicDiffusion(
        sitk.Cast(image, sitk.sitkFloat32),
        timeStep=time_step,
        conductanceParameter=conductance,
        numberOfIterations=int(iterations),
    )


def curvature_anisotropic_diffusion(
    image: sitk.Image, iterations: int = 5, conductance: float = 1.0, time_step: float | None = None
) -> sitk.Image:
    """Curvature (modified curvature diffusion equation) anisotropic diffusion; float32 out."""
    time_step = min(image.GetSpacing()) / 2 ** (image.GetDimension() + 1) if time_step is None else time_step
    return sitk.CurvatureAnisotropicDiffusion(
        sitk.Cast(image, sitk.sitkFloat32),
        timeStep=time_step,
        conductanceParameter=conductance,
        numberOfIterations=int(iterations),
    )


def clahe(image: sitk.Image, alpha: float = 0.3, beta: float = 0.3, radius: int = 5) -> sitk.Image:
    """Contrast-limited adaptive histogram equalisation (ITK's AdaptiveHistogramEqualization).

    ``alpha`` 0 = classic histogram equalisation .. 1 = unsharp mask; ``beta`` 0 = unsharp .. 1 =
    window average; ``radius`` of the local window in voxels. Output float32 in the input's range.
    """
    f = sitk.AdaptiveHistogramEqualizationImageFilter()
    f.SetAlpha(float(alpha))
    f.SetBeta(float(beta))
    f.SetRadius([int(radius)] * image.GetDimension())
    return f.Execute(sitk.Cast(image, sitk.sitkFloat32))


def histogram_equalization(image: sitk.Image, bins: int = 1024) -> sitk.Image:
    """Global histogram equalisation; float32 out, mapped to the input's [min, max] range."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    lo, hi = float(array.min()), float(array.max())
    hist, edges = np.histogram(array, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    centres = 0.5 * (edges[:-1] + edges[1:])
    out = lo + np.interp(array, centres, cdf) * (hi - lo)
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.CopyInformation(image)
    return result


def n4_bias_correction(
    image: sitk.Image, mask: sitk.Image | None = None, shrink: int = 2, iterations: tuple[int, ...] = (20, 20, 10)
) -> sitk.Image:
    """N4 bias-field correction (for MR) at full resolution; float32 out.

    The field is fitted on an image shrunk by ``shrink`` (speed) and applied to the full image.
    ``mask`` (non-zero = fit region) defaults to Otsu's foreground.
    """
    float_image = sitk.Cast(image, sitk.sitkFloat32)
    if mask is None:
        mask = sitk.OtsuThreshold(float_image, 0, 1, 200)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    small = sitk.Shrink(float_image, [shrink] * image.GetDimension()) if shrink > 1 else float_image
    small_mask = sitk.Shrink(mask, [shrink] * image.GetDimension()) if shrink > 1 else mask
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(float_image)
    return sitk.Cast(float_image / sitk.Exp(log_field), sitk.sitkFloat32)


def window(image: sitk.Image, level: float, width: float, out_min: float = 0.0, out_max: float = 1.0) -> sitk.Image:
    """Intensity windowing: [level - width/2, level + width/2] (input unit, e.g. HU) -> [out_min, out_max]."""
    if width <= 0:
        raise ValueError(f"Window width must be > 0, got {width}")
    return sitk.IntensityWindowing(
        sitk.Cast(image, sitk.sitkFloat32), level - width / 2.0, level + width / 2.0, out_min, out_max
    )


def normalize(
    image: sitk.Image,
    mode: str = "zscore",
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> sitk.Image:
    """Intensity normalisation: ``zscore`` (mean 0, sd 1 over ``mask`` or all voxels) or
    ``percentile`` (given percentiles -> [0, 1], clipped); float32 out, geometry kept."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    values = array[mask.astype(bool)] if mask is not None else array
    if mode == "zscore":
        out = (array - values.mean()) / (values.std() or 1.0)
    elif mode == "percentile":
        lo, hi = np.percentile(values, percentiles)
        out = np.clip((array - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    else:
        raise ValueError(f"Unknown normalisation {mode!r}; use zscore or percentile")
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.CopyInformation(image)
    return result


def resample_to_spacing(
    image: sitk.Image, spacing_mm, interpolator=sitk.sitkLinear, default_value: float = 0.0
) -> sitk.Image:
    """Resample onto a grid with the same origin and direction and the given spacing (mm, i/j/k),
    covering the same physical extent."""
    spacing = [float(s) for s in np.broadcast_to(np.asarray(spacing_mm, float), (image.GetDimension(),))]
    if any(s <= 0 for s in spacing):
        raise ValueError(f"Spacing must be positive (mm), got {spacing}")
    size = [max(1, int(round(n * s0 / s))) for n, s0, s in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def nlm(image: sitk.Image, device: str = "cpu", **params) -> sitk.Image:
    """Non-local means (see :mod:`.nonlocal_means`) on a SimpleITK image; float32 out.

    Default: the blockwise mode (Coupé 2008; the benchmarked one: >10x scikit-image's fast mode at a
    higher PSNR); pass ``mode="voxelwise"`` for per-voxel weights."""
    from MedAISegLib.preprocessing.nonlocal_means import nonlocal_means

    params.setdefault("mode", "blockwise")
    out = nonlocal_means(sitk.GetArrayFromImage(image), device=device, **params)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def denoise(image: sitk.Image, method: str, **params) -> sitk.Image:
    """Dispatch ``method`` in :data:`DENOISE_METHODS` with its keyword parameters."""
    functions = {
        "nlm": nlm,
        "anisotropic": gradient_anisotropic_diffusion,
        "curvature": curvature_anisotropic_diffusion,
        "clahe": clahe,
        "histogram": histogram_equalization,
        "n4": n4_bias_correction,
    }
    if method not in functions:
        raise ValueError(f"Unknown preprocessing method {method!r}; choose one of {', '.join(DENOISE_METHODS)}")
    return functions[method](image, **params)
