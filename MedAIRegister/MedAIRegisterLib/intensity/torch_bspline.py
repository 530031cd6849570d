"""B-spline free-form deformation (FFD) registration in torch (CPU or CUDA), exported as ITK's ``BSplineTransform``.

Inputs are KJI numpy arrays with their :class:`~MedAICommonLib.geometry.Geometry` (worked in LPS, mm) and a
linear fixed -> moving LPS matrix ``A`` from a rigid/affine stage. The deformable map (fixed LPS -> moving
LPS) is ``q = A (p + d(p))``: ``d`` is a cubic B-spline displacement (mm, LPS components) on a control grid
laid out exactly as ITK's ``BSplineTransform`` (order 3, the fixed image's direction, domain = the fixed
voxels' bounding box), so ``sitk.CompositeTransform([A, B])`` reproduces it to float precision and Slicer
reads it as a B-spline transform node.

Because the control grid shares the fixed image's axes, ``d`` on a (strided) fixed voxel grid is separable:
three small matrix products of per-axis B-spline weight matrices with the coefficients, which is fast on the
CPU and the GPU and also gives the exact second derivatives for the bending energy. Multi-resolution: image
pyramid (shrink factors, Gaussian sigmas in mm) and control-grid refinement (mesh doubled per level by exact
B-spline subdivision). Metric: Parzen mutual information (``mattes``), ``correlation`` (NCC) or
``meansquares``; L-BFGS (strong Wolfe line search) on the coefficients, bending-energy regularised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from MedAICommonLib.devices import select_device
from MedAICommonLib.geometry import Geometry

from MedAIRegisterLib.intensity.torch_registration import _gaussian_smooth

METRICS = ("mattes", "correlation", "meansquares")


@dataclass
class BSplineGrid:
    """ITK ``BSplineTransform`` domain (LPS): origin, direction (columns = i, j, k axes), physical size (mm,
    along i, j, k) and mesh size (intervals along i, j, k); coefficients are (mesh + 3) per axis."""

    origin: np.ndarray
    direction: np.ndarray
    physical_dimensions: np.ndarray
    mesh_size: tuple

    @property
    def spacing(self) -> np.ndarray:
        """Control-point spacing (mm) along i, j, k."""
        return np.asarray(self.physical_dimensions, float) / np.asarray(self.mesh_size, float)

    @property
    def shape_kji(self) -> tuple:
        """Shape of one coefficient image (k, j, i)."""
        return tuple(int(m) + 3 for m in self.mesh_size[::-1])

    @property
    def grid_origin(self) -> np.ndarray:
        """LPS position of coefficient (0, 0, 0): one spacing before the domain origin (order 3)."""
        return np.asarray(self.origin, float) - self.direction @ self.spacing

    def refined(self) -> BSplineGrid:
        """The same domain with the mesh doubled."""
        return BSplineGrid(self.origin, self.direction, self.physical_dimensions,
                           tuple(2 * int(m) for m in self.mesh_size))


def grid_for_image(geometry: Geometry, shape_kji, spacing_mm: float, levels: int = 1) -> BSplineGrid:
    """Coarsest grid of a ``levels``-level refinement whose finest control spacing is about ``spacing_mm``,
    over the image's voxel bounding box (voxel centres +- half a voxel)."""
    lps = geometry.to_space("LPS")
    size = np.array(shape_kji[::-1], float)
    physical = size * np.array(lps.spacing)
    coarse = [max(1, int(round(p / (spacing_mm * 2 ** (levels - 1))))) for p in physical]
    return BSplineGrid(lps.index_to_point(np.full(3, -0.5)), lps.direction.copy(), physical, tuple(coarse))


def _cubic_weights(t: torch.Tensor) -> tuple:
    return ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)


def _cubic_derivatives(t: torch.Tensor, order: int) -> tuple:
    if order == 1:
        return (-0.5 * (1 - t) ** 2, 1.5 * t**2 - 2 * t, -1.5 * t**2 + t + 0.5, 0.5 * t**2)
    return (1 - t, 3 * t - 2, -3 * t + 1, t)


def axis_matrix(u: np.ndarray, count: int, derivative: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """(len(u), count) B-spline weight matrix (or its ``derivative``-th derivative, per unit of ``u``) of
    continuous control-grid coordinates ``u`` (ITK: support starts at floor(u) - 1)."""
    u_t = torch.as_tensor(np.asarray(u, float), dtype=torch.float64)
    base = torch.floor(u_t)
    t = u_t - base
    weights = _cubic_weights(t) if derivative == 0 else _cubic_derivatives(t, derivative)
    out = torch.zeros(len(u_t), count, dtype=torch.float64)
    rows = torch.arange(len(u_t))
    for offset, w in enumerate(weights):
        column = (base.long() - 1 + offset).clamp(0, count - 1)
        out.index_put_((rows, column), w, accumulate=True)
    return out.to(device=device, dtype=dtype)


def _separable(bk, bj, bi, coefficients):
    """d[k, j, i, :] = sum bk[k, c] bj[j, b] bi[i, a] C[c, b, a, :]."""
    x = torch.einsum("ia,cbax->cbix", bi, coefficients)
    x = torch.einsum("jb,cbix->cjix", bj, x)
    return torch.einsum("kc,cjix->kjix", bk, x)


def _refine_axis(c: torch.Tensor, axis: int) -> torch.Tensor:
    """Exact cubic B-spline subdivision along ``axis``: (m + 3) -> (2m + 3) coefficients on the same domain."""
    c = c.movedim(axis, 0)
    n = c.shape[0]  # m + 3
    out = torch.empty((2 * n - 3,) + tuple(c.shape[1:]), dtype=c.dtype, device=c.device)
    out[0::2] = (c[:-1] + c[1:]) / 2                       # fine f even: between coarse f/2 and f/2 + 1
    out[1::2] = (c[:-2] + 6 * c[1:-1] + c[2:]) / 8          # fine f odd: at coarse (f + 1) / 2
    return out.movedim(0, axis)


def refine_coefficients(coefficients: torch.Tensor) -> torch.Tensor:
    """(K, J, I, 3) coefficients of a grid -> those of :meth:`BSplineGrid.refined` (same displacement)."""
    for axis in range(3):
        coefficients = _refine_axis(coefficients, axis)
    return coefficients


@dataclass
class BSplineResult:
    """``grid`` + ``coefficients`` (K, J, I, 3; LPS mm) of ``d``; ``linear_lps`` = A; metric at the end."""

    grid: BSplineGrid
    coefficients: np.ndarray
    linear_lps: np.ndarray
    final_metric: float
    iterations: int
    elapsed_s: float
    device: str

    def bspline_transform(self):
        """ITK ``BSplineTransform`` of ``p -> p + d(p)`` (LPS)."""
        import SimpleITK as sitk

        transform = sitk.BSplineTransform(3, 3)
        transform.SetTransformDomainOrigin(tuple(float(v) for v in self.grid.origin))
        transform.SetTransformDomainDirection(tuple(float(v) for v in self.grid.direction.ravel()))
        transform.SetTransformDomainPhysicalDimensions(tuple(float(v) for v in self.grid.physical_dimensions))
        transform.SetTransformDomainMeshSize([int(m) for m in self.grid.mesh_size])
        transform.SetParameters(tuple(np.concatenate([self.coefficients[..., c].ravel() for c in range(3)]).tolist()))
        return transform

    def sitk_transform(self):
        """Fixed -> moving composite ``A(p + d(p))`` as an ITK ``CompositeTransform`` (B-spline applied first)."""
        import SimpleITK as sitk

        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(self.linear_lps[:3, :3].ravel()))
        affine.SetTranslation(tuple(self.linear_lps[:3, 3]))
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(affine)
        composite.AddTransform(self.bspline_transform())
        return composite


def _grid_coordinates(fixed_geometry: Geometry, grid: BSplineGrid, indices: list) -> list:
    """Per axis (i, j, k): continuous control-grid coordinate of the given voxel indices."""
    offset = grid.direction.T @ (np.asarray(fixed_geometry.origin) - grid.grid_origin)
    return [(offset[a] + np.asarray(indices[a]) * fixed_geometry.spacing[a]) / grid.spacing[a] for a in range(3)]


def bending_energy(matrices: dict, coefficients: torch.Tensor, spacing: np.ndarray) -> torch.Tensor:
    """Mean over the evaluation grid of sum_ab (d^2 d / dx_a dx_b)^2 (1/mm^2), exact B-spline derivatives."""
    total = 0.0
    for a in range(3):
        for b in range(a, 3):
            orders = [0, 0, 0]
            orders[a] += 1
            orders[b] += 1
            mats = [matrices[(axis, orders[axis])] / spacing[axis] ** orders[axis] for axis in range(3)]
            second = _separable(mats[2], mats[1], mats[0], coefficients)
            total = total + (1.0 if a == b else 2.0) * (second**2).sum(-1).mean()
    return total


def register_bspline(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
                     linear_lps: np.ndarray | None = None, *, metric: str = "mattes", mesh_spacing_mm: float = 30.0,
                     shrink_factors=(4, 2, 1), smoothing_sigmas_mm=(3.0, 1.5, 0.0), iterations: int = 60,
                     bending_weight: float = 0.03, bins: int = 32,
                     sampling_percentage: float = 0.5, max_samples: int = 100000,
                     fixed_mask: np.ndarray | None = None,
                     moving_mask: np.ndarray | None = None, device: str = "auto", seed: int = 0,
                     progress=None) -> BSplineResult:
    """Deformable registration of ``moving`` onto ``fixed`` (KJI arrays) after the linear ``linear_lps``.

    One control-grid refinement per pyramid level, the last with control spacing ~``mesh_spacing_mm``.
    ``bending_weight`` scales the bending energy (mean over control points of the squared second
    derivatives of ``d``), made dimensionless by the final control spacing squared. The metric uses a random
    ``sampling_percentage`` of the strided fixed grid (at least 2000, at most ``max_samples`` points, drawn
    once per level). Masks (KJI, nonzero = inside) on the fixed /
    moving grids restrict the metric. Returns coefficients of ``d`` and ``A`` (see the module docstring).
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r} for the B-spline; use one of {', '.join(METRICS)}.")
    if len(shrink_factors) != len(smoothing_sigmas_mm):
        raise ValueError("Give one smoothing sigma per shrink factor.")
    start = time.perf_counter()
    dev = select_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # small tensors: one thread beats a contended pool (as the rigid torch path)
    try:
        return _run(fixed, fixed_geometry, moving, moving_geometry, linear_lps, metric, mesh_spacing_mm,
                    shrink_factors, smoothing_sigmas_mm, iterations, bending_weight, bins,
                    sampling_percentage, max_samples, fixed_mask, moving_mask, dev, seed, progress, start)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True, eq=False)
class _MovingSide:
    """The moving image as seen from displaced fixed points: continuous ijk ``to_index`` (3x4, linear part
    folded in), ``size`` - 1 per axis (i, j, k), optional ``mask`` (1, 1, K, J, I), intensities ``lo``..``hi``."""

    to_index: torch.Tensor
    size: torch.Tensor
    mask: torch.Tensor | None
    lo: float
    hi: float


@dataclass(frozen=True, eq=False)
class _LevelSamples:
    """A level's fixed samples: ``flat`` indices in the strided grid, LPS ``points`` (mm), ``values``, bins ``index``."""

    flat: torch.Tensor
    points: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor


def _level_samples(fixed_shape, shrink: int, fixed_mask, sampling_percentage: float, max_samples: int, generator,
                   fg: Geometry, f_s: torch.Tensor, f_range, bins: int, dtype, dev) -> tuple[list, _LevelSamples]:
    """(strided i, j, k indices, samples in ``fixed_mask``: >= 2000 or ``sampling_percentage``, <= ``max_samples``)."""
    indices = [np.arange(0, n, shrink) for n in fixed_shape[::-1]]  # i, j, k
    kk, jj, ii = np.meshgrid(indices[2], indices[1], indices[0], indexing="ij")
    keep = np.ones(kk.shape, bool) if fixed_mask is None else np.asarray(fixed_mask)[kk, jj, ii] != 0
    flat = np.flatnonzero(keep)
    count = min(len(flat), max(2000, int(sampling_percentage * len(flat))), max_samples)
    if count < len(flat):
        flat = np.sort(generator.choice(flat, count, replace=False))
    if len(flat) < 50:
        raise ValueError("Fewer than 50 fixed samples for the B-spline; give a larger fixed mask.")
    sample_kji = np.stack([kk.ravel()[flat], jj.ravel()[flat], ii.ravel()[flat]], 1)
    points = torch.as_tensor(fg.index_to_point(sample_kji[:, ::-1].astype(float)), dtype=dtype, device=dev)
    fixed_values = f_s[0, 0][tuple(torch.as_tensor(sample_kji.T, device=dev))]
    fixed_index = _to_bins(fixed_values, f_range[0], f_range[1], bins).round().long()
    return indices, _LevelSamples(torch.as_tensor(flat, device=dev), points, fixed_values, fixed_index)


def _level_basis(fg: Geometry, grid: BSplineGrid, indices: list, dtype, dev) -> tuple[list, dict]:
    """Basis matrices per axis at the samples' grid lines and at the inner control points (orders 0-2: bending)."""
    u = _grid_coordinates(fg, grid, indices)
    counts = grid.shape_kji[::-1]
    matrices = [axis_matrix(u[a], counts[a], 0, dev, dtype) for a in range(3)]
    nodes = {(a, order): axis_matrix(np.arange(1, counts[a] - 1, dtype=float), counts[a], order, dev, dtype)
             for a in range(3) for order in (0, 1, 2)}
    return matrices, nodes


def _data_term(metric: str, coefficients, matrices, samples: _LevelSamples, m_s, moving: _MovingSide, bins: int):
    """The similarity metric of the samples displaced by the B-spline ``coefficients``."""
    displacement = _separable(matrices[2], matrices[1], matrices[0], coefficients).reshape(-1, 3)[samples.flat]
    index = (samples.points + displacement) @ moving.to_index[:, :3].T + moving.to_index[:, 3]
    normalised = 2.0 * index / moving.size - 1.0
    weight = (normalised.abs() <= 1.0).all(1).to(samples.points.dtype)
    grid_points = normalised.reshape(1, 1, 1, -1, 3)
    if moving.mask is not None:
        weight = weight * F.grid_sample(moving.mask, grid_points.detach(), mode="nearest",
                                        padding_mode="zeros", align_corners=True).reshape(-1)
    sampled = F.grid_sample(m_s, grid_points, mode="bilinear", padding_mode="border",
                            align_corners=True).reshape(-1)
    return _metric(metric, samples.values, samples.index, sampled, weight, bins, moving.lo, moving.hi)


def _run(fixed, fixed_geometry, moving, moving_geometry, linear_lps, metric, mesh_spacing_mm, shrink_factors,
         smoothing_sigmas_mm, iterations, bending_weight, bins, sampling_percentage, max_samples,
         fixed_mask, moving_mask, dev, seed, progress, start):
    dtype = torch.float32
    fg, mg = fixed_geometry.to_space("LPS"), moving_geometry.to_space("LPS")
    linear = np.eye(4) if linear_lps is None else np.asarray(linear_lps, float)
    grid = grid_for_image(fg, fixed.shape, mesh_spacing_mm, len(shrink_factors))
    final_spacing = grid.spacing / 2 ** (len(shrink_factors) - 1)
    fixed_t = torch.as_tensor(np.asarray(fixed, np.float32), device=dev)[None, None]
    moving_t = torch.as_tensor(np.asarray(moving, np.float32), device=dev)[None, None]
    f_lo, f_hi = np.percentile(fixed, [0.5, 99.5])
    m_lo, m_hi = np.percentile(moving, [0.5, 99.5])
    moving_side = _MovingSide(  # moving continuous index of a fixed point p + d:  to_index @ A @ (p + d)
        torch.as_tensor((mg.physical_to_ijk() @ linear)[:3], dtype=dtype, device=dev),
        torch.as_tensor(np.array(moving.shape[::-1]) - 1.0, dtype=dtype, device=dev).clamp_min(1.0),
        None if moving_mask is None else torch.as_tensor(np.asarray(moving_mask) != 0, dtype=dtype, device=dev)[None, None],
        m_lo, m_hi)
    generator = np.random.default_rng(seed)
    coefficients = torch.zeros(grid.shape_kji + (3,), dtype=dtype, device=dev)
    total, value = 0, 0.0
    for level, (shrink, sigma_mm) in enumerate(zip(shrink_factors, smoothing_sigmas_mm)):
        if level > 0:
            coefficients = refine_coefficients(coefficients.detach())
            grid = grid.refined()
        f_s = _gaussian_smooth(fixed_t, np.array(sigma_mm) / np.array(fg.spacing))
        m_s = _gaussian_smooth(moving_t, np.array(sigma_mm) / np.array(mg.spacing))
        indices, samples = _level_samples(fixed.shape, shrink, fixed_mask, sampling_percentage, max_samples,
                                          generator, fg, f_s, (f_lo, f_hi), bins, dtype, dev)
        matrices, nodes = _level_basis(fg, grid, indices, dtype, dev)
        coefficients = coefficients.detach().contiguous().requires_grad_(True)
        lam = bending_weight * float(np.mean(final_spacing) ** 2)
        state = {"value": 0.0, "calls": 0, "scale": 1.0}

        def closure(coefficients=coefficients, matrices=matrices, nodes=nodes, samples=samples, m_s=m_s, grid=grid,
                    level=level, lam=lam, state=state):
            if coefficients.grad is not None:
                coefficients.grad = None
            loss = _data_term(metric, coefficients, matrices, samples, m_s, moving_side, bins)
            objective = loss / state["scale"] + lam * bending_energy(nodes, coefficients, grid.spacing)
            objective.backward()
            state["value"] = float(loss.detach())
            state["calls"] += 1
            if progress is not None and state["calls"] % 10 == 0:
                progress(min(1.0, (level + state["calls"] / (1.5 * iterations)) / len(shrink_factors)))
            return objective

        if metric == "meansquares":  # make the data term O(1): divide by the initial mean squared difference
            closure()
            state["scale"] = max(state["value"], 1e-12)
        optimiser = torch.optim.LBFGS([coefficients], lr=1.0, max_iter=iterations, max_eval=int(1.5 * iterations),
                                      history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                      tolerance_change=1e-9)
        optimiser.step(closure)
        value = state["value"]
        total += state["calls"]
    return BSplineResult(grid, coefficients.detach().cpu().double().numpy(), linear, value, total,
                         time.perf_counter() - start, str(dev))


def mattes_mutual_information(fixed_index: torch.Tensor, moving_bins: torch.Tensor, weights: torch.Tensor,
                              bins: int) -> torch.Tensor:
    """Differentiable Mattes MI (nats): fixed intensities in hard bins (``fixed_index``, int64), moving ones
    (scaled to [2, bins - 3]) spread over 4 bins by a cubic B-spline window; O(N), one ``index_add`` per tap."""
    moving_bins = moving_bins.clamp(2.0, bins - 3.0)
    base = moving_bins.detach().floor()
    t = moving_bins - base
    start = fixed_index * bins + base.long() - 1
    flat = torch.zeros(bins * bins, dtype=moving_bins.dtype, device=moving_bins.device)
    for offset, w in enumerate(_cubic_weights(t)):
        flat = flat.index_add(0, start + offset, weights * w)
    joint = flat.reshape(bins, bins)
    joint = joint / joint.sum().clamp_min(1e-12)
    pf, pm = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    ratio = joint / (pf @ pm).clamp_min(1e-12)
    return (joint * torch.log(ratio.clamp_min(1e-12))).sum()


def _to_bins(values: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    return ((values - lo) / max(hi - lo, 1e-6)).clamp(0, 1) * (bins - 5.0) + 2.0


def _metric(metric, fixed_values, fixed_index, sampled, weight, bins, m_lo, m_hi):
    """Loss to minimise: -MI (nats), -NCC, or mean squared difference (intensity units squared)."""
    if metric == "mattes":
        return -mattes_mutual_information(fixed_index, _to_bins(sampled, m_lo, m_hi, bins), weight, bins)
    w = weight / weight.sum().clamp_min(1.0)
    if metric == "meansquares":
        return (w * (sampled - fixed_values) ** 2).sum()
    fm, mm = (w * fixed_values).sum(), (w * sampled).sum()
    cov = (w * (fixed_values - fm) * (sampled - mm)).sum()
    var = (w * (fixed_values - fm) ** 2).sum() * (w * (sampled - mm) ** 2).sum()
    return -cov / var.clamp_min(1e-12).sqrt()


def warp_moving(result: BSplineResult, fixed_geometry: Geometry, fixed_shape, moving: np.ndarray,
                moving_geometry: Geometry, device: str = "cpu") -> np.ndarray:
    """The moving image resampled onto the fixed grid through ``A(p + d(p))`` (trilinear, border values 0)."""
    dev = select_device(device)
    fg, mg = fixed_geometry.to_space("LPS"), moving_geometry.to_space("LPS")
    indices = [np.arange(n) for n in tuple(fixed_shape)[::-1]]
    u = _grid_coordinates(fg, result.grid, indices)
    counts = result.grid.shape_kji[::-1]
    mats = [axis_matrix(u[a], counts[a], 0, dev, torch.float64) for a in range(3)]
    coefficients = torch.as_tensor(result.coefficients, dtype=torch.float64, device=dev)
    with torch.no_grad():
        displacement = _separable(mats[2], mats[1], mats[0], coefficients)
        kk, jj, ii = np.meshgrid(*indices[::-1], indexing="ij")
        points = torch.as_tensor(fg.index_to_point(np.stack([ii, jj, kk], -1).reshape(-1, 3)), device=dev)
        to_index = torch.as_tensor((mg.physical_to_ijk() @ result.linear_lps)[:3], device=dev)
        index = (points + displacement.reshape(-1, 3)) @ to_index[:, :3].T + to_index[:, 3]
        size = torch.as_tensor(np.array(moving.shape[::-1]) - 1.0, device=dev).clamp_min(1.0)
        normalised = 2.0 * index / size - 1.0
        volume = torch.as_tensor(np.asarray(moving, np.float64), device=dev)[None, None]
        out = F.grid_sample(volume, normalised.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    return out.reshape(tuple(fixed_shape)).cpu().numpy()
