"""Sparse dose-influence matrix (dose-grid voxel x bixel) of photon beams, forward dose, dose grids.

The dose grid may be coarser than the CT: it spans the CT's extent (first voxel centre shared) with
``resolution_mm`` spacing; radiological depths are traced through the CT-grid density directly at
the dose-grid voxel centres; doses are interpolated back to the CT grid trilinearly. Dose is only
computed in ``voxel_mask`` (as matRad: the union of the plan's structures), elsewhere it is 0.
Voxel order of the matrix rows: the dose grid's KJI array flattened in C order. Units: Gy per
unit bixel weight (matRad's photon base-data normalisation); all coordinates LPS mm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from MedAICommonLib.geometry import Geometry

from .beams import Beam, voxel_points_lps
from .iso_plane_cells import IsoPlaneCells, iso_plane_projection, near_ray_lattice, search_half_width
from .matrad_io import PhotonMachine
from .memory_estimate import available_memory_bytes
from .pencil_beam import convolve_kernels, depth_components, interpolate_kernels, iso_lateral_offsets
from .raytrace import nonzero_box, radiological_depth, sample_volume, ssd_along_ray


@dataclass
class DoseInfluence:
    """``matrix`` (n_voxels x n_bixels, CSC, float32) on ``geometry`` (LPS) with bixel book-keeping."""

    matrix: sp.csc_matrix
    geometry: Geometry
    beam_of_bixel: np.ndarray
    ssd_mm: list[float] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def num_bixels(self) -> int:
        return self.matrix.shape[1]

    def dose(self, weights) -> np.ndarray:
        """Dose (KJI array on the dose grid) for bixel ``weights``."""
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size != self.num_bixels:
            raise ValueError(f"Expected {self.num_bixels} bixel weights, got {w.size}.")
        return (self.matrix @ w).reshape(self.geometry.shape_kji)

    def beam_dose(self, weights, beam: int) -> np.ndarray:
        """Dose of one beam (KJI, dose grid)."""
        w = np.where(self.beam_of_bixel == beam, np.asarray(weights, float), 0.0)
        return self.dose(w)


def make_dose_grid(ct_geometry: Geometry, resolution_mm=None) -> Geometry:
    """Dose-grid geometry (LPS): the CT's own grid when ``resolution_mm`` is None, else a coarser one."""
    g = ct_geometry.to_space("LPS")
    if resolution_mm is None:
        return g
    res = np.broadcast_to(np.asarray(resolution_mm, float), (3,))
    if np.any(res <= 0):
        raise ValueError(f"Dose grid resolution must be positive (mm), got {res.tolist()}.")
    extent = (np.array(g.shape_kji[::-1]) - 1) * np.array(g.spacing)
    n = np.floor(extent / res + 1e-6).astype(int) + 1
    return Geometry(tuple(res), g.origin, g.direction, "LPS", tuple(int(v) for v in n[::-1]))


def resample_nearest(array: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Nearest-neighbour resampling of a KJI array between grids (0 outside; the dtype is kept, so a
    bool mask stays a mask): gathered at the target voxel centres, without converting the source."""
    src = source.to_space("LPS")
    array = np.asarray(array)
    ijk = np.floor(src.point_to_index(voxel_points_lps(target)) + 0.5)     # ties up, as SimpleITK
    n = np.array(src.shape_kji[::-1])
    inside = np.all((ijk >= 0) & (ijk < n), axis=1)
    idx = ijk[inside].astype(np.int64)
    out = np.zeros(int(np.prod(target.shape_kji)), array.dtype)
    out[inside] = array[idx[:, 2], idx[:, 1], idx[:, 0]]
    return out.reshape(target.shape_kji)


def dose_to_ct_grid(dose: np.ndarray, dose_geometry: Geometry, ct_geometry: Geometry) -> np.ndarray:
    """Trilinear interpolation of a dose-grid dose onto the CT grid (float32, KJI)."""
    ct = ct_geometry.to_space("LPS")
    if dose_geometry.same_grid(ct):
        return np.asarray(dose, dtype=np.float32)
    axes = _axis_aligned_map(dose_geometry.to_space("LPS"), ct)
    if axes is not None:
        return _separable_trilinear(np.asarray(dose, dtype=np.float32), axes, ct.shape_kji)
    vol = torch.as_tensor(np.asarray(dose, dtype=np.float32))
    out = np.empty(ct.shape_kji, np.float32)
    nk, nj, ni = ct.shape_kji
    slab = max(1, int(4_000_000 // max(1, nj * ni)))        # a few million points at a time (memory)
    jj, ii = np.mgrid[0:nj, 0:ni]
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        kji = np.stack(np.broadcast_arrays(np.arange(k0, k1)[:, None, None], jj[None], ii[None]), axis=-1).reshape(-1, 3)
        pts = torch.as_tensor(ct.index_to_point(kji[:, ::-1].astype(float)), dtype=torch.float32)
        out[k0:k1] = sample_volume(vol, dose_geometry, pts).numpy().reshape(k1 - k0, nj, ni)
    return out


def _axis_aligned_map(dose_geometry: Geometry, ct: Geometry) -> list[tuple[float, float]] | None:
    """Per axis (k, j, i) the (scale, offset) of CT index -> dose-grid index when the grids share their
    axes (a dose grid made by :func:`make_dose_grid`), else None."""
    m = dose_geometry.physical_to_ijk() @ ct.ijk_to_physical()
    off = m[:3, :3] - np.diag(np.diag(m[:3, :3]))
    extent = max(ct.shape_kji)
    if np.abs(off).max() * extent > 1e-6:
        return None
    return [(float(m[a, a]), float(m[a, 3])) for a in (2, 1, 0)]


def _lerp_weights(n_out: int, scale: float, offset: float, n_in: int):
    """Linear interpolation along one axis with zero outside (as grid_sample's zero padding):
    output index t takes ``w0[t] * v[i0[t]] + w1[t] * v[i1[t]]``."""
    f = scale * np.arange(n_out) + offset
    lo = np.floor(f).astype(np.int64)
    frac = f - lo
    w0 = np.where((lo >= 0) & (lo < n_in), 1.0 - frac, 0.0).astype(np.float32)
    w1 = np.where((lo + 1 >= 0) & (lo + 1 < n_in), frac, 0.0).astype(np.float32)
    return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), w0, w1


def _separable_trilinear(dose: np.ndarray, axes, shape_kji) -> np.ndarray:
    """Trilinear interpolation between axis-aligned grids, one axis at a time: each dose plane is
    interpolated in-plane once, each CT plane is a blend of two of them (no per-voxel coordinates)."""
    nk, nj, ni = shape_kji
    k0, k1, wk0, wk1 = _lerp_weights(nk, *axes[0], dose.shape[0])
    j0, j1, wj0, wj1 = _lerp_weights(nj, *axes[1], dose.shape[1])
    i0, i1, wi0, wi1 = _lerp_weights(ni, *axes[2], dose.shape[2])
    planes: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in planes:
            rows = dose[k][j0] * wj0[:, None] + dose[k][j1] * wj1[:, None]
            planes.clear() if len(planes) > 2 else None
            planes[k] = rows[:, i0] * wi0 + rows[:, i1] * wi1
        return planes[k]

    out = np.empty(shape_kji, np.float32)
    for k in range(nk):
        if wk0[k] == 0.0 and wk1[k] == 0.0:
            out[k] = 0.0
            continue
        np.multiply(plane(int(k0[k])), wk0[k], out=out[k])
        if wk1[k] != 0.0:
            out[k] += plane(int(k1[k])) * wk1[k]
    return out


def _near_rays(u: np.ndarray, v: np.ndarray, ray_pos: np.ndarray, width: float, cutoff: float) -> np.ndarray:
    """Points (iso-plane u, v) within about ``cutoff`` of some ray: a superset, by a dilated ray lattice
    (:func:`iso_plane_cells.near_ray_lattice`)."""
    lattice, lo, r, shape = near_ray_lattice(ray_pos, width, cutoff)
    grid = np.zeros(shape, bool)
    grid[lattice[:, 0] - lo[0], lattice[:, 1] - lo[1]] = True
    from scipy import ndimage

    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    grid = ndimage.binary_dilation(grid, structure=(yy ** 2 + xx ** 2) <= r * r)
    iu = np.round(u / width).astype(int) - lo[0]
    iv = np.round(v / width).astype(int) - lo[1]
    inside = (iu >= 0) & (iv >= 0) & (iu < shape[0]) & (iv < shape[1])
    out = np.zeros(len(u), bool)
    out[inside] = grid[iu[inside], iv[inside]]
    return out


def _sample_tail(ray_i, rad_depth, dose, tail, generator, delta_mm: float = 5.0):
    """matRad's dij sampling of the lateral tail; returns (keep mask, new doses of the kept entries)."""
    if not bool(tail.any()):
        return torch.ones_like(tail), dose
    cluster = ray_i.long() * 100_000 + torch.ceil(rad_depth / delta_mm).long()
    uniq, inv = torch.unique(cluster[tail], return_inverse=True)
    cmax = torch.zeros(len(uniq), dtype=dose.dtype, device=dose.device).scatter_reduce(
        0, inv, dose[tail], "amax", include_self=False)
    thr = cmax[inv]
    r = torch.rand(int(tail.sum()), generator=generator).to(dose.device)
    keep_tail = (r * thr <= dose[tail]) & (thr > 0)
    keep = ~tail
    keep_idx = torch.nonzero(tail, as_tuple=True)[0][keep_tail]
    keep[keep_idx] = True
    new = dose.clone()
    new[keep_idx] = thr[keep_tail]
    return keep, new[keep]


def _bixel_rotations(ray_pos: np.ndarray, sad: float) -> np.ndarray:
    """(B, 3, 3) rotations about the source turning each bixel's ray into the beam axis (calcGeoDists)."""
    b = np.column_stack([ray_pos[:, 0], np.full(len(ray_pos), float(sad)), ray_pos[:, 1]])
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    w = np.cross(np.array([0.0, 1.0, 0.0]), b)
    c = b[:, 1]
    s2 = (w * w).sum(axis=1)
    factor = np.where(s2 > 1e-20, (1 - c) / np.maximum(s2, 1e-20), 0.0)
    cross = np.zeros((len(b), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    cross[:, 1, 0], cross[:, 2, 0], cross[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
    return np.eye(3)[None] - cross + factor[:, None, None] * (cross @ cross)


class _ColumnStore:
    """CSC entries of all beams, written in place: one reused scratch slot buffer for a beam's
    uncompacted columns and output arrays reserved for the expected total (untouched memory costs
    nothing; grown if short), so the entries are not copied again at the end (page faults are dear)."""

    def __init__(self, n_beams: int):
        self.n_beams = n_beams
        self.slot_rows = np.empty(0, np.int32)
        self.slot_vals = np.empty(0, np.float32)
        self.rows = np.empty(0, np.int32)
        self.vals = np.empty(0, np.float32)
        self.used = 0
        self.beams_done = 0

    def slots(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Scratch buffers of at least ``size`` entries."""
        if size > len(self.slot_rows):
            self.slot_rows = np.empty(size, np.int32)
            self.slot_vals = np.empty(size, np.float32)
        return self.slot_rows, self.slot_vals

    def append(self, offsets, counts) -> None:
        """Compact a beam's columns (slot ``offsets``, kept ``counts``) from the scratch into the output."""
        from .dose_kernels import compact_columns

        n = int(counts.sum())
        if self.used + n > len(self.rows):
            # room for the other beams as large as this one's uncompacted bound (virtual until written)
            want = self.used + n + int(offsets[-1] * 1.25) * (self.n_beams - self.beams_done - 1)
            free = available_memory_bytes()
            if free is not None:
                want = min(want, max(self.used + n, free // 16))     # 8 bytes an entry, half the free memory
            else:       # unknown (a system that may commit at allocation): twice the average beam so far
                want = min(want, 2 * (self.used + n) * self.n_beams // (self.beams_done + 1))
            self._grow(want)
        compact_columns(offsets, counts, self.slot_rows, self.slot_vals, self.rows[self.used:], self.vals[self.used:])
        self.used += n
        self.beams_done += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) trimmed to the entries written: shrunk in place (realloc, no copy), since
        scipy would copy a view of a much larger buffer."""
        self.slot_rows = self.slot_vals = None
        for name in ("rows", "vals"):
            try:        # on the attribute itself: a local alias would count as a reference and refuse
                getattr(self, name).resize(self.used, refcheck=True)
            except ValueError:          # referenced elsewhere: copy instead
                setattr(self, name, getattr(self, name)[:self.used].copy())
        return self.rows, self.vals

    def _grow(self, capacity: int) -> None:
        rows, vals = np.empty(capacity, np.int32), np.empty(capacity, np.float32)
        rows[:self.used], vals[:self.used] = self.rows[:self.used], self.vals[:self.used]
        self.rows, self.vals = rows, vals


def _beam_columns_numba(q, u, v, comp, rad, rows, beam: Beam, kernels, cutoff, sampling, core_r, rel_threshold,
                        seed, store: _ColumnStore):
    """One beam's dij columns on the CPU (numba), appended to ``store``: returns the counts per bixel."""
    from .dose_kernels import column_upper_bounds, pencil_beam_columns

    rp = np.asarray(beam.ray_pos, float)
    cells = IsoPlaneCells.covering(u, v, beam.bixel_width)       # the binning the memory estimate counts
    ncu, ncv, cw, u0, v0 = cells.ncu, cells.ncv, cells.width, cells.u0, cells.v0
    cell = cells.cell_of(u, v)
    order = np.argsort(cell, kind="stable")
    cell_start = np.zeros(cells.count + 1, np.int64)
    np.cumsum(np.bincount(cell, minlength=cells.count), out=cell_start[1:])
    half = search_half_width(cutoff)
    lo_u, hi_u, lo_v, hi_v = cells.bixel_rectangles(rp, half)
    bounds = column_upper_bounds(cell_start, ncu, ncv, lo_u, hi_u, lo_v, hi_v)
    offsets = np.zeros(len(rp) + 1, np.int64)
    np.cumsum(bounds, out=offsets[1:])
    slot_rows, slot_vals = store.slots(int(offsets[-1]))
    counts = np.zeros(len(rp), np.int64)
    kern = np.ascontiguousarray(kernels.values_last.cpu().numpy(), dtype=np.float32)
    pencil_beam_columns(np.ascontiguousarray(q[order], dtype=np.float64),
                        np.ascontiguousarray(comp[order], dtype=np.float32),
                        np.ascontiguousarray(rad[order], dtype=np.float64),
                        np.ascontiguousarray(rows[order], dtype=np.int32), cell_start, ncu, ncv, u0, v0, cw,
                        half ** 2, rp, lo_u, hi_u, lo_v, hi_v,
                        _bixel_rotations(rp, beam.sad), float(beam.sad), float(cutoff) ** 2, kern,
                        float(kernels.start_mm), float(kernels.res_mm), offsets, bool(sampling), float(core_r) ** 2,
                        5.0, float(rel_threshold), int(seed), slot_rows, slot_vals, counts)
    store.append(offsets, counts)
    return counts


def _depth_components_np(machine: PhotonMachine, rad: np.ndarray, geo: np.ndarray, sad: float) -> np.ndarray:
    """numpy twin of :func:`pencil_beam.depth_components` (N, 3) float32."""
    betas = np.asarray(machine.betas, float)
    e_m = np.exp(-machine.m * rad)[:, None]
    comp = betas / (betas - machine.m) * (e_m - np.exp(-betas[None, :] * rad[:, None]))
    return (comp * ((sad / geo) ** 2)[:, None]).astype(np.float32)


def default_kernel_cutoff(machine: PhotonMachine, lateral_cutoff_mm: float, bixel_width: float) -> float:
    """Kernel extent (mm) that leaves the convolved kernel exact within the lateral cut-off: the cut-off
    plus the bixel's half diagonal twice over plus the penumbra's 5 sigma and a 2 mm margin."""
    sigma = machine.penumbra_fwhm / np.sqrt(8 * np.log(2))
    return float(lateral_cutoff_mm + 1.5 * bixel_width + 5 * sigma + 2.0)


def _central_ray(beam: Beam) -> int:
    return int(np.argmin((beam.ray_pos ** 2).sum(axis=1)))


def compute_dij(density: np.ndarray, ct_geometry: Geometry, beams: list[Beam], machine: PhotonMachine,
                voxel_mask: np.ndarray | None = None, dose_resolution_mm=None,
                lateral_cutoff_mm: float = 50.0, kernel_cutoff_mm: float | None = None,
                rel_threshold: float = 0.0, ssd_density_threshold: float = 0.05,
                ignore_outside_densities: bool = True, dij_sampling: bool = False,
                sampling_core_mm: float = 20.0, seed: int = 0, device: str | torch.device = "cpu",
                progress=None, engine: str = "auto") -> DoseInfluence:
    """Dose-influence matrix of ``beams`` on a dose grid (see module docstring).

    ``density``: relative electron density (KJI, CT grid); ``voxel_mask``: CT-grid bool mask of the
    voxels to compute (default: density > 0.05); ``lateral_cutoff_mm``: matRad's geometric lateral
    cut-off (the effective radius adds half the bixel diagonal); ``rel_threshold``: drop entries
    below this fraction of each bixel's maximum (0 keeps all); ``ignore_outside_densities``: as
    matRad's default, density outside ``voxel_mask`` (couch, immobilisation) is set to 0 for ray tracing;
    ``dij_sampling``: matRad's lateral dij sampling (outside ``sampling_core_mm`` + half the bixel
    diagonal from the bixel axis, tail voxels of each 5 mm radiological-depth cluster are kept with
    probability dose / cluster maximum and set to that maximum: unbiased, far fewer entries).
    ``engine``: "numba" (fused CPU kernels), "torch" (the GPU engine, on ``device``) or "auto" (numba on
    the CPU, torch elsewhere); "torch" on the CPU runs the GPU code where no GPU is.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    t0 = time.perf_counter()
    ct = ct_geometry.to_space("LPS")
    if ct.shape_kji != tuple(np.shape(density)):
        raise ValueError("The density array does not match the CT geometry's shape.")
    dgeo = make_dose_grid(ct, dose_resolution_mm)
    if voxel_mask is None:
        voxel_mask = np.asarray(density) > 0.05
    if ignore_outside_densities:
        density = np.where(voxel_mask, np.asarray(density, np.float32), np.float32(0.0))
    mask_d = resample_nearest(np.asarray(voxel_mask, bool), ct, dgeo)
    flat_idx = np.flatnonzero(mask_d.ravel())
    if flat_idx.size == 0:
        raise ValueError("No voxels to compute dose in; check the body/structure masks.")
    pts_all = voxel_points_lps(dgeo, mask_d)
    dev = torch.device(device)
    if engine not in ("auto", "numba", "torch"):
        raise ValueError(f"Unknown dose engine {engine!r}; use auto, numba or torch.")
    if engine == "numba" and dev.type != "cpu":
        raise ValueError("The numba dose engine runs on the CPU; use engine='torch' on a GPU.")
    use_numba = engine == "numba" or (engine == "auto" and dev.type == "cpu")
    density_np = np.ascontiguousarray(np.asarray(density, dtype=np.float32))
    density_t = None if use_numba else torch.as_tensor(density_np, device=dev)
    box = nonzero_box(density_np if use_numba else density_t)      # once for all beams
    # fan rays and stored path samples: the CT spacing, but no finer than half the dose grid
    fan_mm = max(min(ct.spacing), min(dgeo.spacing) / 2.0)
    rows, col_counts, vals, beam_of_bixel, ssds = [], [], [], [], []
    kernel_cache = {}
    store = _ColumnStore(len(beams))
    col0 = 0
    t_trace = t_pb = 0.0
    for b, beam in enumerate(beams):
        if beam.num_bixels == 0:
            continue
        sad = beam.sad
        source = beam.source
        rot = beam.rotation
        cutoff = lateral_cutoff_mm + beam.bixel_width / np.sqrt(2.0)
        q_all, u, v = iso_plane_projection(pts_all, beam)
        rp = beam.ray_pos
        near = _near_rays(u, v, rp, beam.bixel_width, cutoff)
        cand = np.flatnonzero(near)
        t1 = time.perf_counter()
        rad = radiological_depth(density_np if use_numba else density_t, ct, source, rot, sad, pts_all[cand],
                                 lateral_mm=fan_mm, store_mm=fan_mm / 2.0, device=dev,
                                 engine="numba" if use_numba else "torch", box=box)
        central = _central_ray(beam)
        ssd = ssd_along_ray(density, ct, source, beam.ray_targets_lps()[central], ssd_density_threshold)
        ssds.append(ssd)
        k_cut = kernel_cutoff_mm or default_kernel_cutoff(machine, lateral_cutoff_mm, beam.bixel_width)
        key = (int(np.argmin(np.abs(machine.kernel_ssd - ssd))) if np.isfinite(ssd) else -1, beam.bixel_width, k_cut)
        if key not in kernel_cache:
            kernel_cache[key] = convolve_kernels(machine, ssd, beam.bixel_width, kernel_cutoff=k_cut, device=dev)
        kernels = kernel_cache[key]
        t2 = time.perf_counter()
        t_trace += t2 - t1
        if use_numba:
            qc = q_all[cand]
            geo = np.linalg.norm(qc, axis=1)
            comp = _depth_components_np(machine, rad, geo, sad)
            col_counts.append(_beam_columns_numba(qc, u[cand], v[cand], comp, rad, flat_idx[cand], beam, kernels,
                                                  cutoff, dij_sampling,
                                                  sampling_core_mm + beam.bixel_width / np.sqrt(2.0),
                                                  rel_threshold, seed * 7919 + b, store))
            t_pb += time.perf_counter() - t2
            beam_of_bixel.append(np.full(len(rp), b))
            col0 += len(rp)
            if progress is not None:
                progress.update("dose influence", (b + 1) / len(beams))
            continue
        q = torch.as_tensor(q_all[cand], dtype=torch.float32, device=dev)
        uu = torch.as_tensor(u[cand], dtype=torch.float32, device=dev)
        vv = torch.as_tensor(v[cand], dtype=torch.float32, device=dev)
        geo_t = torch.as_tensor(np.linalg.norm(q_all[cand], axis=1), dtype=torch.float32, device=dev)
        rad_t = torch.as_tensor(rad, dtype=torch.float32, device=dev)
        comp = depth_components(machine, rad_t, geo_t, sad)
        rp_t = torch.as_tensor(rp, dtype=torch.float32, device=dev)
        slack = (cutoff * 1.02 + 1.0) ** 2
        chunk = max(1, int(4_000_000 // max(1, len(cand))))
        for a in range(0, len(rp), chunk):
            r = rp_t[a:a + chunk]
            d2 = (uu[None, :] - r[:, 0:1]) ** 2 + (vv[None, :] - r[:, 1:2]) ** 2
            ray_i, vox_i = torch.nonzero(d2 <= slack, as_tuple=True)
            lx, lz = iso_lateral_offsets(q[vox_i], r[ray_i], sad)
            keep = lx * lx + lz * lz <= cutoff * cutoff
            ray_i, vox_i, lx, lz = ray_i[keep], vox_i[keep], lx[keep], lz[keep]
            kv = interpolate_kernels(kernels, lx, lz)
            dose = torch.clamp((kv * comp[vox_i]).sum(dim=1), min=0.0)
            if dij_sampling and dose.numel():
                core_r = sampling_core_mm + beam.bixel_width / np.sqrt(2.0)
                lat2 = (lx * lx + lz * lz) * (geo_t[vox_i] / sad) ** 2     # un-projected, as matRad
                keep, dose = _sample_tail(ray_i, rad_t[vox_i], dose, lat2 > core_r ** 2, generator)
                ray_i, vox_i = ray_i[keep], vox_i[keep]
            if rel_threshold > 0 and dose.numel():
                cmax = torch.zeros(len(r), dtype=dose.dtype, device=dev).scatter_reduce(0, ray_i, dose, "amax")
                keep = dose >= rel_threshold * cmax[ray_i]
                ray_i, vox_i, dose = ray_i[keep], vox_i[keep], dose[keep]
            order = torch.argsort(ray_i, stable=True).cpu().numpy()
            rows.append(flat_idx[cand[vox_i.cpu().numpy()[order]]])
            col_counts.append(np.bincount(ray_i.cpu().numpy(), minlength=len(r)))
            vals.append(dose.cpu().numpy().astype(np.float32)[order])
        t_pb += time.perf_counter() - t2
        beam_of_bixel.append(np.full(len(rp), b))
        col0 += len(rp)
        if progress is not None:
            progress.update("dose influence", (b + 1) / len(beams))
    n_vox = int(np.prod(dgeo.shape_kji))
    indptr = np.zeros(col0 + 1, np.int64)
    if col_counts:
        np.cumsum(np.concatenate(col_counts), out=indptr[1:])
    idx_dtype = np.int32 if max(n_vox, indptr[-1]) < 2 ** 31 - 1 else np.int64
    if use_numba:
        indices, data = store.finish()
    else:
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        data = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    mat = sp.csc_matrix((data, indices.astype(idx_dtype, copy=False), indptr.astype(idx_dtype)), shape=(n_vox, col0))
    timings = {"ray_tracing_s": t_trace, "pencil_beam_s": t_pb, "total_s": time.perf_counter() - t0}
    return DoseInfluence(mat, dgeo, np.concatenate(beam_of_bixel) if beam_of_bixel else np.zeros(0, int),
                         ssds, timings)
