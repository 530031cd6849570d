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

from MedAIPlanLib.dose.beams import Beam, voxel_points_lps
from MedAIPlanLib.dose.dij_engines import (
    BeamGeometry,
    BeamVoxels,
    ColumnStore,
    SamplingSettings,
    numba_beam_columns,
    torch_beam_columns,
)
from MedAIPlanLib.dose.iso_plane_cells import iso_plane_projection, near_ray_lattice
from MedAIPlanLib.dose.matrad_io import PhotonMachine
from MedAIPlanLib.dose.pencil_beam import ConvolvedKernels, convolve_kernels
from MedAIPlanLib.dose.raytrace import nonzero_box, radiological_depth, sample_volume, ssd_along_ray


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


def default_kernel_cutoff(machine: PhotonMachine, lateral_cutoff_mm: float, bixel_width: float) -> float:
    """Kernel extent (mm) that leaves the convolved kernel exact within the lateral cut-off: the cut-off
    plus the bixel's half diagonal twice over plus the penumbra's 5 sigma and a 2 mm margin."""
    sigma = machine.penumbra_fwhm / np.sqrt(8 * np.log(2))
    return float(lateral_cutoff_mm + 1.5 * bixel_width + 5 * sigma + 2.0)


def _central_ray(beam: Beam) -> int:
    return int(np.argmin((beam.ray_pos ** 2).sum(axis=1)))



@dataclass(frozen=True, eq=False)
class _SharedSetup:
    """What all beams share: the CT and dose grids (LPS), the density that rays are traced through
    (numpy for numba, a tensor on ``device`` for torch; ``ssd_density`` for the SSD search), its
    non-zero box, the dose-grid voxels to compute (LPS points and their flattened KJI ``rows``) and the
    fan-ray spacing ``fan_mm``."""

    ct: Geometry
    dose_grid: Geometry
    trace_density: np.ndarray | torch.Tensor
    ssd_density: np.ndarray
    box: tuple
    points: np.ndarray
    rows: np.ndarray
    fan_mm: float
    device: torch.device
    use_numba: bool


def _use_numba(engine: str, dev: torch.device) -> bool:
    """Whether ``engine`` on ``dev`` means the numba engine (else torch); refuses a bad choice."""
    if engine not in ("auto", "numba", "torch"):
        raise ValueError(f"Unknown dose engine {engine!r}; use auto, numba or torch.")
    if engine == "numba" and dev.type != "cpu":
        raise ValueError("The numba dose engine runs on the CPU; use engine='torch' on a GPU.")
    return engine == "numba" or (engine == "auto" and dev.type == "cpu")


def _shared_setup(density, ct_geometry: Geometry, voxel_mask, dose_resolution_mm, ignore_outside_densities: bool,
                  device, engine: str) -> _SharedSetup:
    """Checks the inputs and prepares the grids, the voxels and the density for all beams."""
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
    use_numba = _use_numba(engine, dev)
    density_np = np.ascontiguousarray(np.asarray(density, dtype=np.float32))
    trace = density_np if use_numba else torch.as_tensor(density_np, device=dev)
    # fan rays and stored path samples: the CT spacing, but no finer than half the dose grid
    fan_mm = max(min(ct.spacing), min(dgeo.spacing) / 2.0)
    return _SharedSetup(ct, dgeo, trace, density, nonzero_box(trace), pts_all, flat_idx, fan_mm, dev, use_numba)


class _BeamTracer:
    """Per beam, the work both engines share: candidate voxels, radiological depths, SSD and the
    convolved kernels (cached by nearest base-data SSD, bixel width and kernel extent)."""

    def __init__(self, setup: _SharedSetup, machine: PhotonMachine, lateral_cutoff_mm: float,
                 kernel_cutoff_mm: float | None, ssd_density_threshold: float):
        self.setup, self.machine = setup, machine
        self.lateral_cutoff_mm, self.kernel_cutoff_mm = lateral_cutoff_mm, kernel_cutoff_mm
        self.ssd_density_threshold = ssd_density_threshold
        self.kernel_cache: dict = {}

    def trace(self, beam: Beam) -> tuple[BeamVoxels, BeamGeometry, ConvolvedKernels, float]:
        """(candidate voxels, bixels, kernels, central-ray SSD in mm) of ``beam``."""
        s = self.setup
        cutoff = self.lateral_cutoff_mm + beam.bixel_width / np.sqrt(2.0)
        q_all, u, v = iso_plane_projection(s.points, beam)
        cand = np.flatnonzero(_near_rays(u, v, beam.ray_pos, beam.bixel_width, cutoff))
        rad = radiological_depth(s.trace_density, s.ct, beam.source, beam.rotation, beam.sad, s.points[cand],
                                 lateral_mm=s.fan_mm, store_mm=s.fan_mm / 2.0, device=s.device,
                                 engine="numba" if s.use_numba else "torch", box=s.box)
        ssd = ssd_along_ray(s.ssd_density, s.ct, beam.source, beam.ray_targets_lps()[_central_ray(beam)],
                            self.ssd_density_threshold)
        voxels = BeamVoxels(q_all[cand], u[cand], v[cand], rad, s.rows[cand])
        return voxels, BeamGeometry(beam.ray_pos, beam.sad, beam.bixel_width, cutoff), self._kernels(beam, ssd), ssd

    def _kernels(self, beam: Beam, ssd: float) -> ConvolvedKernels:
        m = self.machine
        k_cut = self.kernel_cutoff_mm or default_kernel_cutoff(m, self.lateral_cutoff_mm, beam.bixel_width)
        key = (int(np.argmin(np.abs(m.kernel_ssd - ssd))) if np.isfinite(ssd) else -1, beam.bixel_width, k_cut)
        if key not in self.kernel_cache:
            self.kernel_cache[key] = convolve_kernels(m, ssd, beam.bixel_width, kernel_cutoff=k_cut,
                                                      device=self.setup.device)
        return self.kernel_cache[key]


def _csc(indices: np.ndarray, data: np.ndarray, col_counts: list, n_vox: int, n_cols: int) -> sp.csc_matrix:
    """CSC matrix (n_vox x n_cols) from entries in column order and the entry count of each column;
    32-bit indices where they fit."""
    indptr = np.zeros(n_cols + 1, np.int64)
    if col_counts:
        np.cumsum(np.concatenate(col_counts), out=indptr[1:])
    idx_dtype = np.int32 if max(n_vox, indptr[-1]) < 2 ** 31 - 1 else np.int64
    return sp.csc_matrix((data, indices.astype(idx_dtype, copy=False), indptr.astype(idx_dtype)), shape=(n_vox, n_cols))


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
    setup = _shared_setup(density, ct_geometry, voxel_mask, dose_resolution_mm, ignore_outside_densities, device,
                          engine)
    tracer = _BeamTracer(setup, machine, lateral_cutoff_mm, kernel_cutoff_mm, ssd_density_threshold)
    sampling = SamplingSettings(dij_sampling, sampling_core_mm, rel_threshold, seed)
    store = ColumnStore(len(beams)) if setup.use_numba else None
    rows, col_counts, vals, beam_of_bixel, ssds = [], [], [], [], []
    t_trace = t_pb = 0.0
    for b, beam in enumerate(beams):
        if beam.num_bixels == 0:
            continue
        t1 = time.perf_counter()
        voxels, geometry, kernels, ssd = tracer.trace(beam)
        ssds.append(ssd)
        t2 = time.perf_counter()
        t_trace += t2 - t1
        if setup.use_numba:
            col_counts.append(numba_beam_columns(voxels, geometry, kernels, machine, sampling, b, store))
        else:
            beam_rows, beam_counts, beam_vals = torch_beam_columns(voxels, geometry, kernels, machine, sampling,
                                                                   generator, setup.device)
            rows += beam_rows
            col_counts += beam_counts
            vals += beam_vals
        t_pb += time.perf_counter() - t2
        beam_of_bixel.append(np.full(len(beam.ray_pos), b))
        if progress is not None:
            progress.update("dose influence", (b + 1) / len(beams))
    if store is not None:
        indices, data = store.finish()
    else:
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        data = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    n_cols = sum(len(c) for c in beam_of_bixel)
    mat = _csc(indices, data, col_counts, int(np.prod(setup.dose_grid.shape_kji)), n_cols)
    timings = {"ray_tracing_s": t_trace, "pencil_beam_s": t_pb, "total_s": time.perf_counter() - t0}
    return DoseInfluence(mat, setup.dose_grid, np.concatenate(beam_of_bixel) if beam_of_bixel else np.zeros(0, int),
                         ssds, timings)
