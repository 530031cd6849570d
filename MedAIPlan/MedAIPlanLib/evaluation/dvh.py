"""Dose-volume histograms from planar contours (sub-voxel sampling, end caps) or voxel masks.

A structure is represented by *dose samples*: points inside it, each with the volume (mm^3) it
stands for. Dose is interpolated trilinearly at the points, so the DVH does not depend on the
dose grid's voxel boundaries. Two ways to get the samples:

* :func:`contour_samples` from planar (axial) contours, as in RTSTRUCT: the shape between planes is
  interpolated (smooth implicit fields, see the function), and the first/last planes get half-slice
  end caps (the convention of Nelms et al. 2015 and of most TPSs). In-plane, points on a fine grid
  are tested against the polygons with the even-odd rule (holes are contours inside contours).
* :func:`mask_samples` from a boolean voxel mask (every voxel split into ``oversampling^3``
  sub-voxels that all take the voxel's membership).

All points and contours are in the **same physical space as the dose geometry** (LPS or RAS, as
named by ``Geometry.space``); arrays are KJI; dose in Gy; volumes in mm^3 (cc in the DVH tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.evaluation.contour_fields import (
    Blend,
    fill_missing_rows,
    inside_polygons,
    plane_sdf,
    power_field,
    row_power_field,
)

__all__ = ["DVH", "DoseSamples", "inside_polygons"]


@dataclass
class DoseSamples:
    """Doses (Gy) at points inside a structure and the volume (mm^3) each point stands for.

    ``outside_dose_grid`` marks a structure that lies entirely off the dose grid (no samples, no DVH).
    """

    dose: np.ndarray
    weight: np.ndarray
    outside_dose_grid: bool = False

    @property
    def volume_cc(self) -> float:
        """Total volume in cc."""
        return float(self.weight.sum() / 1000.0)


@dataclass
class DVH:
    """Cumulative and differential DVH on dose bins (Gy) with volumes in cc and %."""

    dose_gy: np.ndarray  # bin lower edges, starting at 0
    cumulative_cc: np.ndarray  # volume receiving >= dose_gy
    differential_cc: np.ndarray  # volume in [dose_gy, dose_gy + bin)
    total_cc: float

    @property
    def cumulative_percent(self) -> np.ndarray:
        """Cumulative volume as % of the structure volume."""
        return 100.0 * self.cumulative_cc / self.total_cc if self.total_cc > 0 else self.cumulative_cc * 0


def group_contours_by_plane(contours: list[np.ndarray], tol_mm: float = 0.01) -> dict[float, list[np.ndarray]]:
    """Group closed planar contours ((N, 3) points) by their z coordinate (mm), rounded to ``tol_mm``."""
    planes: dict[float, list[np.ndarray]] = {}
    for c in contours:
        c = np.asarray(c, dtype=float).reshape(-1, 3)
        if len(c) < 3:
            continue
        z = float(np.round(np.median(c[:, 2]) / tol_mm) * tol_mm)
        planes.setdefault(z, []).append(c[:, :2])
    return dict(sorted(planes.items()))


def slab_bounds(zs: np.ndarray, slice_spacing: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper z (mm) of the slab each contour plane stands for: half-way to its neighbours, half a
    slice spacing (default: the median gap) beyond the first/last plane and at gaps > 1.5 spacings."""
    if len(zs) == 1:
        half = (slice_spacing or 1.0) / 2.0
        return zs - half, zs + half
    gaps = np.diff(zs)
    default = slice_spacing if slice_spacing else float(np.median(gaps))
    # A gap much larger than the slice spacing separates two parts: each side gets its own end cap.
    gaps_capped = np.where(gaps > 1.5 * default, default, gaps)
    lower = zs - np.concatenate([[default], gaps_capped]) / 2.0
    upper = zs + np.concatenate([gaps_capped, [default]]) / 2.0
    return lower, upper


def _in_plane_grid(
    planes: dict[float, list[np.ndarray]], n_z: float, max_step: float, step_mm: float | None, target_samples: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Cell-centred in-plane points ``(gx, gy)`` (mm, ``meshgrid`` "xy") and the cell size ``(sx, sy)`` (mm).

    The cells tile the contours' bounding box exactly (midpoint rule: a straight edge of the bounding box
    is integrated exactly), with one spare cell on each side. ``step_mm`` None: about ``target_samples``
    points over ``n_z`` sub-slices, a quarter voxel or finer for small structures (their D-values need
    it), up to ``max_step`` (one dose voxel) for large ones (a body's DVH does not).
    """
    allp = np.concatenate([p for polys in planes.values() for p in polys])
    (xmin, ymin), (xmax, ymax) = allp.min(axis=0), allp.max(axis=0)
    if step_mm is None:
        area = max((xmax - xmin) * (ymax - ymin), 1e-6)
        step_mm = float(np.clip(np.sqrt(area * n_z / target_samples), 0.05, max_step))
    nx, ny = (max(1, int(np.ceil((hi - lo) / step_mm))) for lo, hi in ((xmin, xmax), (ymin, ymax)))
    sx = (xmax - xmin) / nx if xmax > xmin else step_mm
    sy = (ymax - ymin) / ny if ymax > ymin else step_mm
    xs = xmin + (np.arange(-1, nx + 1) + 0.5) * sx
    ys = ymin + (np.arange(-1, ny + 1) + 0.5) * sy
    gx, gy = np.meshgrid(xs, ys, indexing="xy")
    return gx, gy, sx, sy


class _SubSliceSampler:
    """Collects the dose samples of one structure: in-plane grid points inside a field, sub-slice by sub-slice.

    ``dose`` is the KJI dose array (Gy) on ``geometry``; ``gx``, ``gy`` the in-plane points (mm, same space);
    ``cell_area`` (mm^2) times a sub-slice's thickness is each point's volume; sub-slices are no thicker
    than ``fine_z`` (mm).
    """

    def __init__(
        self, dose: np.ndarray, geometry: Geometry, gx: np.ndarray, gy: np.ndarray, cell_area: float, fine_z: float
    ):
        self.dose, self.geometry, self.cell_area, self.fine_z = dose, geometry, cell_area, fine_z
        # continuous k, j, i of the grid points at z = 0 and per mm of z: a sub-slice's points are one add away
        to_ijk = geometry.physical_to_ijk()
        self.grid_kji = (np.stack([gx, gy, np.zeros_like(gx)], axis=-1) @ to_ijk[:3, :3].T + to_ijk[:3, 3])[..., ::-1]
        self.per_z_kji = to_ijk[:3, 2][::-1]
        self.doses: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []

    def add(self, z_from: float, z_to: float, field_at) -> None:
        """Sample the slab ``z_from``..``z_to`` (mm): the points where ``field_at(z)`` > 0 on each sub-slice."""
        n_sub = max(1, int(np.ceil((z_to - z_from) / self.fine_z)))
        dz = (z_to - z_from) / n_sub
        for s in range(n_sub):
            zz = z_from + (s + 0.5) * dz
            inside = field_at(zz) > 0
            if inside.any():
                kji = self.grid_kji[inside] + zz * self.per_z_kji
                self.doses.append(map_coordinates(self.dose, kji.T, order=1, mode="constant", cval=0.0))
                self.weights.append(np.full(len(kji), self.cell_area * dz))

    def add_vertices(self, verts: np.ndarray, z: float) -> None:
        """Add in-plane contour vertices ((N, 2) mm) at height ``z`` (mm) with zero weight (Dmin/Dmax only)."""
        self.doses.append(dose_at_points(self.dose, self.geometry, np.column_stack([verts, np.full(len(verts), z)])))
        self.weights.append(np.zeros(len(verts)))

    def samples(self) -> DoseSamples:
        """All samples collected so far."""
        if not self.doses:
            return DoseSamples(np.zeros(0), np.zeros(0))
        return DoseSamples(np.concatenate(self.doses), np.concatenate(self.weights))


def _sample_planes(
    sampler: _SubSliceSampler,
    planes: dict[float, list[np.ndarray]],
    zs: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    sdf: list,
    rows: list,
    joined: list[bool],
    interpolate: bool,
) -> None:
    """Sample every contour plane's slab: end caps where the stack starts, stops or breaks, the blended
    shape towards the next plane where ``joined``, and the contour vertices at the slab limits."""
    for n, z in enumerate(zs):
        cap_below = n == 0 or not joined[n - 1]
        cap_above = n == len(zs) - 1 or not joined[n]
        if cap_below or not interpolate:
            sampler.add(lower[n], z, lambda zz, n=n: sdf[n])
        if cap_above or not interpolate:
            sampler.add(z, upper[n], lambda zz, n=n: sdf[n])
        else:
            between = Blend(sdf, rows, joined, n)
            sampler.add(z, zs[n + 1], lambda zz, n=n, f=between: f((zz - zs[n]) / (zs[n + 1] - zs[n])))
        verts = np.concatenate(planes[z])
        for zz in {lower[n] if cap_below else z, upper[n] if cap_above else z}:
            sampler.add_vertices(verts, zz)


def contour_samples(
    contours: list[np.ndarray],
    dose: np.ndarray,
    geometry: Geometry,
    slice_spacing: float | None = None,
    step_mm: float | None = None,
    target_samples: int = 4_000_000,
    interpolate: bool = True,
) -> DoseSamples:
    """Dose samples of a structure given as closed axial contours ((N, 3) points, same space as ``geometry``).

    Between two contour planes the shape is interpolated (``interpolate``; else each plane fills its
    slab) by a monotone cubic blend along z of per-plane implicit fields that vary quadratically along z
    for spheres, cones and cylinders: the scan-line field ``L^2 - (x - c)^2`` of each row's polygon
    interval where the row crosses the contours of all planes used (rows missing towards a pole are
    extrapolated from the next planes), else the 2D "power" field ``d (2 D - d)`` (d the in-plane
    signed distance, D its maximum). Half-slice end caps extend the first and last contours. ``step_mm`` is the in-plane step (default: from the structure's extent so that
    about ``target_samples`` grid points are used, a quarter of the dose voxel or finer for structures
    that fit in that budget, at most one dose voxel for large ones); the z sub-slices
    are no thicker than a quarter of the smallest dose voxel. Contour vertices at the slab limits are
    added with zero weight so that Dmin/Dmax see the structure's extremes.
    """
    planes = group_contours_by_plane(contours)
    if not planes:
        return DoseSamples(np.zeros(0), np.zeros(0))
    dose = np.asarray(dose, dtype=np.float64)  # once, not at every sub-slice
    zs = np.array(list(planes))
    lower, upper = slab_bounds(zs, slice_spacing)
    fine = min(geometry.spacing) / 4.0
    # z sub-slices: also no thicker than 1/8 of the contour spacing (the shape changes fastest
    # along z near the poles, where D99/D1 of a structure lie).
    fine_z = min(fine, float(np.median(np.diff(zs))) / 8.0) if len(zs) > 1 else fine
    n_z = max(1.0, float(np.sum(upper - lower)) / fine_z)
    gx, gy, sx, sy = _in_plane_grid(planes, n_z, min(geometry.spacing), step_mm, target_samples)
    sdf = [power_field(plane_sdf(polys, gx, gy, (sx, sy)), min(sx, sy)) for polys in planes.values()]
    rows = [row_power_field(polys, gx, gy) for polys in planes.values()]
    sampler = _SubSliceSampler(dose, geometry, gx, gy, sx * sy, fine_z)
    default = slice_spacing if slice_spacing else (float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0)
    joined = [interpolate and (zs[n + 1] - zs[n]) <= 1.5 * default for n in range(len(zs) - 1)]
    rows = fill_missing_rows(rows, sdf, joined)
    _sample_planes(sampler, planes, zs, lower, upper, sdf, rows, joined, interpolate)
    return sampler.samples()


def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def contour_volume_cc(contours: list[np.ndarray], slice_spacing: float | None = None) -> float:
    """Volume (cc) of stacked planar contours: even-odd shoelace areas x slab thickness (with end caps)."""
    planes = group_contours_by_plane(contours)
    if not planes:
        return 0.0
    zs = np.array(list(planes))
    lower, upper = slab_bounds(zs, slice_spacing)
    total = 0.0
    for polys, z0, z1 in zip(planes.values(), lower, upper):
        area = 0.0
        for n, p in enumerate(polys):  # even-odd: a contour nested in an odd number of others is a hole
            depth = sum(bool(inside_polygons(p[:1], [q])[0]) for m, q in enumerate(polys) if m != n)
            area += abs(_shoelace(p)) * (-1.0 if depth % 2 else 1.0)
        total += area * (z1 - z0)
    return total / 1000.0


def dose_at_points(dose: np.ndarray, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Trilinear dose at (N, 3) physical points (same space as ``geometry``); 0 outside the grid."""
    ijk = geometry.point_to_index(np.asarray(points, dtype=float))
    coords = ijk[:, ::-1].T  # k, j, i
    return map_coordinates(np.asarray(dose, dtype=np.float64), coords, order=1, mode="constant", cval=0.0)


def fraction_inside_grid(geometry: Geometry, points: np.ndarray) -> float:
    """Share of (N, 3) physical points (same space as ``geometry``) that fall inside the voxel grid."""
    points = np.asarray(points, dtype=float)
    if not len(points) or geometry.shape_kji is None:
        return 0.0
    ijk = geometry.point_to_index(points)
    upper = np.array(geometry.shape_kji[::-1], float) - 0.5
    return float(np.mean(np.all((ijk >= -0.5) & (ijk <= upper), axis=1)))


def aligned_offset(geometry: Geometry, mask_geometry: Geometry, tol: float = 1e-4) -> np.ndarray | None:
    """Integer (i, j, k) index of the mask grid's first voxel on the dose grid when the mask grid is the dose
    grid or a shifted crop of it (same spacing and direction, whole-voxel offset); else None."""
    if mask_geometry.space != geometry.space:
        mask_geometry = mask_geometry.to_space(geometry.space)
    to_dose = geometry.physical_to_ijk() @ mask_geometry.ijk_to_physical()
    offset = to_dose[:3, 3]
    if not np.allclose(to_dose[:3, :3], np.eye(3), atol=tol) or not np.allclose(offset, np.rint(offset), atol=tol):
        return None
    return np.rint(offset).astype(int)


def _aligned_voxel_doses(dose: np.ndarray, mask: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Dose at the centres of the mask voxels (KJI masks on an aligned grid, see :func:`aligned_offset`); 0 off the grid."""
    if not offset.any() and mask.shape == dose.shape:
        return dose[mask]
    nz = (
        np.nonzero(mask.any(axis=(1, 2)))[0],
        np.nonzero(mask.any(axis=(0, 2)))[0],
        np.nonzero(mask.any(axis=(0, 1)))[0],
    )
    lo, hi = np.array([a[0] for a in nz]), np.array([a[-1] + 1 for a in nz])
    on_mask = np.zeros(tuple(hi - lo), dtype=dose.dtype)
    start = lo + offset[::-1]  # KJI on the dose grid
    src_lo, src_hi = np.maximum(start, 0), np.minimum(start + hi - lo, dose.shape)
    if np.all(src_hi > src_lo):
        dst = tuple(slice(a - b, c - b) for a, b, c in zip(src_lo, start, src_hi))
        on_mask[dst] = dose[tuple(slice(a, c) for a, c in zip(src_lo, src_hi))]
    return on_mask[mask[tuple(slice(a, b) for a, b in zip(lo, hi))]]


def mask_samples(
    dose: np.ndarray,
    geometry: Geometry,
    mask: np.ndarray,
    mask_geometry: Geometry | None = None,
    oversampling: int = 2,
    max_samples: int = 16_000_000,
) -> DoseSamples:
    """Dose samples of a voxel mask (KJI bool on ``mask_geometry``, default the dose grid).

    When the mask grid is the dose grid or a whole-voxel crop of it (a plan's structures on its dose), each
    voxel is one sample at its centre, read by index: the dose there is known, sub-voxels would only blend in
    the dose of the voxels around the structure, and the same dose and mask give the same numbers whichever
    crop the mask was saved on, so a plan's own statistics and ``medai dvh`` on its files agree (and the
    mean is the voxels' mean). On any other grid each mask voxel is split into ``oversampling^3``
    sub-voxels with the dose interpolated at their centres; large masks use fewer (down to one) so that
    at most ``max_samples`` samples are made. Voxels off the dose grid get 0 Gy.
    """
    mask = np.asarray(mask, dtype=bool)
    mask_geometry = mask_geometry or geometry
    if mask_geometry.space != geometry.space:
        mask_geometry = mask_geometry.to_space(geometry.space)
    count = int(np.count_nonzero(mask))
    if not count:
        return DoseSamples(np.zeros(0), np.zeros(0))
    offset = aligned_offset(geometry, mask_geometry)
    if offset is not None:
        d = _aligned_voxel_doses(np.asarray(dose), mask, offset).astype(np.float64)
        return DoseSamples(d, np.broadcast_to(float(np.prod(mask_geometry.spacing)), d.shape))
    n = max(1, int(oversampling))
    while n > 1 and count * n**3 > max_samples:
        n -= 1
    dose = np.asarray(dose, dtype=np.float64)
    idx = np.argwhere(mask).astype(float)[:, ::-1]  # i, j, k
    sub = (np.arange(n) + 0.5) / n - 0.5
    si, sj, sk = np.meshgrid(sub, sub, sub, indexing="ij")
    d = np.concatenate(
        [
            dose_at_points(dose, geometry, mask_geometry.index_to_point(idx + off))
            for off in np.stack([si.ravel(), sj.ravel(), sk.ravel()], axis=1)
        ]
    )
    voxel_mm3 = float(np.prod(mask_geometry.spacing)) / n**3
    return DoseSamples(d, np.broadcast_to(voxel_mm3, d.shape))


def compute_dvh(samples: DoseSamples, bin_width_gy: float = 0.01, max_dose_gy: float | None = None) -> DVH:
    """Cumulative and differential DVH of ``samples`` with bins of ``bin_width_gy`` from 0 Gy."""
    top = float(samples.dose.max()) if len(samples.dose) else 0.0
    top = max(top, max_dose_gy or 0.0)
    n_bins = int(np.ceil(top / bin_width_gy)) + 2
    edges = np.arange(n_bins + 1) * bin_width_gy
    diff, _ = np.histogram(np.clip(samples.dose, 0, None), bins=edges, weights=samples.weight)
    diff_cc = diff / 1000.0
    cum = np.cumsum(diff_cc[::-1])[::-1]
    return DVH(edges[:-1], cum, diff_cc, samples.volume_cc)


def dvh_agreement(
    reference_dose_gy,
    reference_volume_percent,
    dvh: DVH,
    max_dose_gy: float,
    volume_criterion_percent: float = 1.0,
    dose_criterion_percent: float = 1.0,
) -> float:
    """% of reference DVH points that agree with ``dvh`` (1D gamma <= 1, Ebert et al. 2010, as SlicerRT).

    Gamma of a reference point (D, V%) is the smallest normalised distance to the cumulative curve
    of ``dvh`` with volume tolerance ``volume_criterion_percent`` (% of the structure volume) and
    dose tolerance ``dose_criterion_percent`` of ``max_dose_gy``.
    """
    rd = np.asarray(reference_dose_gy, dtype=float)
    rv = np.asarray(reference_volume_percent, dtype=float)
    dose_tol = max_dose_gy * dose_criterion_percent / 100.0
    # Densify the curve so point-to-point distances approximate point-to-curve distances.
    top = max(float(dvh.dose_gy[-1]), float(rd.max()) if len(rd) else 0.0)
    fine = np.arange(0.0, top + dose_tol, dose_tol / 10.0)
    curve = np.interp(fine, dvh.dose_gy, dvh.cumulative_percent, right=0.0)
    passed = 0
    for d, v in zip(rd, rv):
        g2 = ((fine - d) / dose_tol) ** 2 + ((curve - v) / volume_criterion_percent) ** 2
        passed += bool(g2.min() <= 1.0)
    return 100.0 * passed / max(len(rd), 1)
