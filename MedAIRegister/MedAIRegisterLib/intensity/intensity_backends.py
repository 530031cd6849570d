"""Intensity registration of two SimpleITK images by the backend a device choice selects: SimpleITK's framework,
MedAI's numba MI kernel (CPU, rigid/affine) or torch (linear MI, B-spline free-form deformation).

Images are SimpleITK images (LPS, mm); every backend returns ITK's **fixed -> moving** transform (the
resampling convention) with its final metric value and time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from MedAICommonLib import notices
from MedAICommonLib.geometry import Geometry

from MedAIRegisterLib.intensity import intensity_registration

from MedAIRegisterLib import quality

DEVICES = ("cpu", "simpleitk", "torch", "torch-cpu", "cuda", "auto")
"""``cpu``: MedAI's CPU path (rigid/affine: fused numba MI kernel; bspline: the torch free-form deformation on
the CPU); ``simpleitk``: SimpleITK's framework (the reference); ``torch``: the torch path on CUDA when available,
else on the CPU; ``torch-cpu``: torch on the CPU; ``cuda``: torch on the GPU; ``auto``: torch on CUDA when
available, else ``cpu``. Similarity transforms and non-MI metrics of linear registrations run on SimpleITK
whatever the device (the torch/numba paths do MI)."""


@dataclass
class BackendResult:
    """``transform``: ITK fixed -> moving (LPS); ``metric_value``: the optimiser's final value; ``elapsed_s``."""

    transform: sitk.Transform
    metric_value: float
    elapsed_s: float


def choose_backend(device: str, transform_type: str, metric: str | None) -> tuple[str, str]:
    """(backend, torch device) for a device choice: simpleitk, numba (CPU, linear MI) or torch."""
    if device not in DEVICES:
        raise ValueError(f"Unknown device {device!r}; use one of {', '.join(DEVICES)}.")
    linear_mi = transform_type in ("rigid", "affine") and metric in (None, "mattes")
    if device == "simpleitk" or transform_type == "similarity" or (transform_type != "bspline" and not linear_mi):
        if device in ("torch", "torch-cpu", "cuda") and transform_type != "similarity":
            raise ValueError(
                f"The torch path registers linear transforms by mutual information, not {metric!r}; "
                "use --device simpleitk for mean squares or correlation."
            )
        return "simpleitk", "cpu"
    if device in ("torch", "auto"):
        import torch

        if torch.cuda.is_available():
            return "torch", "cuda"
        if device == "auto":
            device = "cpu"
        else:
            return "torch", "cpu"
    if device == "torch-cpu":
        return "torch", "cpu"
    if device == "cuda":
        return "torch", "cuda"
    return ("numba", "cpu") if transform_type != "bspline" else ("torch", "cpu")


def mask_array(mask_image: sitk.Image | None, image: sitk.Image) -> np.ndarray | None:
    """A mask image as a KJI uint8 array on ``image``'s grid (nearest-neighbour resampling if needed)."""
    if mask_image is None:
        return None
    same = (
        mask_image.GetSize() == image.GetSize()
        and np.allclose(mask_image.GetOrigin(), image.GetOrigin(), atol=1e-4)
        and np.allclose(mask_image.GetSpacing(), image.GetSpacing(), atol=1e-6)
        and np.allclose(mask_image.GetDirection(), image.GetDirection(), atol=1e-6)
    )
    if not same:
        mask_image = sitk.Resample(mask_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    array = (sitk.GetArrayFromImage(mask_image) > 0).astype(np.uint8)
    if not array.any():
        raise ValueError("A registration mask is empty on its image; pick a segment that overlaps the volume.")
    return array


def register_with_backend(
    backend: str,
    torch_device: str,
    fixed: sitk.Image,
    moving: sitk.Image,
    transform_type: str,
    preset: str,
    *,
    metric: str | None = None,
    sampling_percentage: float | None = None,
    initial: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    progress=None,
) -> BackendResult:
    """Register ``moving`` to ``fixed`` on ``backend`` (see :func:`choose_backend`) with the settings of
    ``preset`` (a key of ``intensity_registration.PRESETS``); ``metric`` and ``sampling_percentage``
    (fraction 0..1) override it; ``initial``: a linear fixed -> moving transform to start from (default:
    geometry centres aligned); masks: binary images on the fixed / moving grids; ``progress(stage, fraction)``
    with stage "registering" (linear stage) or "deformable" (B-spline stage)."""
    progress = progress or (lambda _stage, _f: None)

    def report(fraction):
        progress("registering", fraction)

    if backend == "simpleitk":
        result = intensity_registration.register_images(
            fixed,
            moving,
            transform_type,
            preset=preset,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            sampling_percentage=sampling_percentage,
            metric=metric,
            initial_transform=initial,
            progress=report,
        )
        return BackendResult(result.transform, result.metric_value, result.elapsed_s)
    settings = intensity_registration.PRESETS[preset]
    if backend == "numba" or transform_type != "bspline":
        result = _register_linear(
            backend,
            fixed,
            moving,
            transform_type,
            settings,
            sampling_percentage,
            torch_device,
            initial,
            fixed_mask,
            moving_mask,
            report,
        )
        return BackendResult(result.sitk_transform(), -result.mutual_information, result.elapsed_s)
    return _register_bspline(
        fixed, moving, settings, metric, sampling_percentage, torch_device, initial, fixed_mask, moving_mask, progress
    )


def _register_linear(
    backend,
    fixed,
    moving,
    transform_type,
    settings,
    sampling_percentage,
    torch_device,
    initial,
    fixed_mask,
    moving_mask,
    progress,
):
    arguments = dict(
        bins=settings.bins,
        sampling_percentage=sampling_percentage or max(0.2, settings.sampling_percentage),
        shrink_factors=settings.shrink_factors,
        smoothing_sigmas_mm=settings.smoothing_sigmas_mm,
        initial_matrix_lps=None if initial is None else intensity_registration.affine_matrix(initial),
        fixed_mask=mask_array(fixed_mask, fixed),
        moving_mask=mask_array(moving_mask, moving),
        progress=progress,
    )
    images = (
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
        transform_type,
    )
    if backend == "numba":
        from MedAIRegisterLib.intensity.numba_registration import register_numba

        return register_numba(*images, **arguments)
    from MedAIRegisterLib.intensity.torch_registration import register_torch

    return register_torch(*images, device=torch_device, **arguments)


def _register_bspline(
    fixed, moving, settings, metric, sampling_percentage, torch_device, initial, fixed_mask, moving_mask, progress
) -> BackendResult:
    """Affine MI stage (numba on the CPU, torch on CUDA) then the torch B-spline FFD; ITK composite."""
    from MedAIRegisterLib.intensity.torch_bspline import register_bspline

    linear_backend = "numba" if torch_device == "cpu" else "torch"
    linear = _register_linear(
        linear_backend,
        fixed,
        moving,
        "affine",
        settings,
        sampling_percentage,
        torch_device,
        initial,
        fixed_mask,
        moving_mask,
        lambda f: progress("registering", 0.3 * f),
    )
    result = register_bspline(
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
        linear.matrix_lps,
        metric=metric or "mattes",
        mesh_spacing_mm=settings.bspline_mesh_mm / 2,
        bins=settings.bins,
        fixed_mask=mask_array(fixed_mask, fixed),
        moving_mask=mask_array(moving_mask, moving),
        device=torch_device,
        progress=lambda f: progress("deformable", 0.3 + 0.7 * f),
    )
    return BackendResult(result.sitk_transform(), result.final_metric, linear.elapsed_s + result.elapsed_s)


def resample_onto(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """``moving`` resampled (linear) onto ``reference``'s grid through ITK's fixed -> moving ``transform``, as a
    float32 KJI array; outside the moving image: its minimum."""
    floor = float(np.min(sitk.GetArrayViewFromImage(moving)))
    out = sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), reference, transform, sitk.sitkLinear, floor)
    return sitk.GetArrayFromImage(out)


def keep_better_than_start(
    fixed: sitk.Image,
    moving: sitk.Image,
    start: sitk.Transform,
    result: sitk.Transform,
    metric: str = "mattes",
    same_modality: bool = False,
):
    """(transform kept, moving resampled with it onto the fixed grid, metrics) for a registration ``result``
    that began at ``start`` (both ITK fixed -> moving). The metrics (see :func:`quality.alignment_metrics`,
    on the whole fixed grid) say whether the optimised ``metric`` improved; when it got worse the start is kept
    (``kept_start`` True) and a warning says so. With ``same_modality`` a result that lowers NCC warns too."""
    fixed_array = sitk.GetArrayFromImage(fixed)
    before, after = resample_onto(moving, fixed, start), resample_onto(moving, fixed, result)
    metrics = quality.alignment_metrics(fixed_array, before, after, metric)
    improved = metrics.pop("improved")
    metrics["kept_start"] = not improved
    if not improved:
        notices.warn(
            f"Registration made the {metrics['metric']} worse than at the start "
            f"({metrics['metric_before']:.4g} -> {metrics['metric_after']:.4g}); the starting position is "
            "kept, not the result: check the overlap, give an initial transform or another preset."
        )
        return start, before, metrics
    if same_modality and metrics["ncc_after"] < metrics["ncc_before"]:
        notices.warn(
            f"Registration raised the {metrics['metric']} but lowered the correlation of these "
            f"same-modality volumes ({metrics['ncc_before']:.3f} -> {metrics['ncc_after']:.3f}); check "
            "the overlay."
        )
    return result, after, metrics
