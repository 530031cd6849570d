"""One beam's dose-influence columns, one function per engine (used by :func:`dose_influence.compute_dij`).

* :func:`numba_beam_columns`: the fused CPU kernels (:mod:`dose_kernels`), bixel by bixel, written in
  place into a :class:`ColumnStore` shared by all beams.
* :func:`torch_beam_columns`: tensor code for a GPU (or the CPU where no GPU is), chunks of bixels at a
  time, returning (rows, counts, values) of the beam's columns.

Both take the same groups of inputs: the beam's candidate voxels (:class:`BeamVoxels`), its bixels
(:class:`BeamGeometry`), the aperture-convolved kernels and the sampling settings
(:class:`SamplingSettings`). Coordinates are the beam's eye view relative to the source (mm); the
columns are in Gy per unit bixel weight, rows are the dose grid's flattened KJI indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from MedAIPlanLib.dose.iso_plane_cells import IsoPlaneCells, search_half_width
from MedAIPlanLib.dose.matrad_io import PhotonMachine
from MedAIPlanLib.dose.memory_estimate import available_memory_bytes
from MedAIPlanLib.dose.pencil_beam import ConvolvedKernels, depth_components, interpolate_kernels, iso_lateral_offsets

SAMPLING_DEPTH_MM = 5.0  # matRad's radiological-depth cluster width of the dij sampling


@dataclass(frozen=True, eq=False)
class BeamVoxels:
    """A beam's candidate voxels (those near some ray): BEV points ``q`` (N, 3; mm, relative to the
    source), iso-plane positions ``u``, ``v`` (mm), radiological depths ``rad`` (mm) and their dose-grid
    rows ``rows`` (flattened KJI index)."""

    q: np.ndarray
    u: np.ndarray
    v: np.ndarray
    rad: np.ndarray
    rows: np.ndarray


@dataclass(frozen=True, eq=False)
class BeamGeometry:
    """A beam's bixels: ``ray_pos`` (B, 2) iso-plane ray positions (mm), source-axis distance ``sad``
    (mm), ``bixel_width`` (mm) and the lateral cut-off ``cutoff_mm`` (iso plane; half the bixel
    diagonal included)."""

    ray_pos: np.ndarray
    sad: float
    bixel_width: float
    cutoff_mm: float


@dataclass(frozen=True)
class SamplingSettings:
    """matRad's lateral dij sampling (``enabled``; voxels beyond ``core_mm`` plus half the bixel
    diagonal from the bixel axis are sampled) and the relative threshold (``rel_threshold``: entries
    below this fraction of their bixel's maximum are dropped); ``seed`` of the random numbers."""

    enabled: bool
    core_mm: float
    rel_threshold: float
    seed: int

    def core_radius(self, bixel_width: float) -> float:
        """Radius (mm, un-projected) within which no entry is sampled: the core plus half the bixel diagonal."""
        return self.core_mm + bixel_width / np.sqrt(2.0)


@dataclass(frozen=True, eq=False)
class _CellIndex:
    """Voxels binned by iso-plane cell (``ncu`` x ``ncv`` cells of ``width`` mm from (``u0``, ``v0``)):
    ``order`` sorts the voxels by cell, ``cell_start`` (count + 1) each cell's first sorted voxel;
    cells farther than sqrt(``reach2``) from a bixel's ray are skipped."""

    order: np.ndarray
    cell_start: np.ndarray
    ncu: int
    ncv: int
    u0: float
    v0: float
    width: float
    reach2: float

    def kernel_args(self) -> tuple:
        """The cell arguments of :func:`dose_kernels.pencil_beam_columns`, in its order."""
        return self.cell_start, self.ncu, self.ncv, self.u0, self.v0, self.width, self.reach2


class ColumnStore:
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
        from MedAIPlanLib.dose.dose_kernels import compact_columns

        n = int(counts.sum())
        if self.used + n > len(self.rows):
            # room for the other beams as large as this one's uncompacted bound (virtual until written)
            want = self.used + n + int(offsets[-1] * 1.25) * (self.n_beams - self.beams_done - 1)
            free = available_memory_bytes()
            if free is not None:
                want = min(want, max(self.used + n, free // 16))  # 8 bytes an entry, half the free memory
            else:  # unknown (a system that may commit at allocation): twice the average beam so far
                want = min(want, 2 * (self.used + n) * self.n_beams // (self.beams_done + 1))
            self._grow(want)
        compact_columns(offsets, counts, self.slot_rows, self.slot_vals, self.rows[self.used :], self.vals[self.used :])
        self.used += n
        self.beams_done += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) trimmed to the entries written: shrunk in place (realloc, no copy), since
        scipy would copy a view of a much larger buffer."""
        self.slot_rows = self.slot_vals = None
        for name in ("rows", "vals"):
            try:  # on the attribute itself: a local alias would count as a reference and refuse
                getattr(self, name).resize(self.used, refcheck=True)
            except ValueError:  # referenced elsewhere: copy instead
                setattr(self, name, getattr(self, name)[: self.used].copy())
        return self.rows, self.vals

    def _grow(self, capacity: int) -> None:
        rows, vals = np.empty(capacity, np.int32), np.empty(capacity, np.float32)
        rows[: self.used], vals[: self.used] = self.rows[: self.used], self.vals[: self.used]
        self.rows, self.vals = rows, vals


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


def _depth_components_np(machine: PhotonMachine, rad: np.ndarray, geo: np.ndarray, sad: float) -> np.ndarray:
    """numpy twin of :func:`pencil_beam.depth_components` (N, 3) float32."""
    betas = np.asarray(machine.betas, float)
    e_m = np.exp(-machine.m * rad)[:, None]
    comp = betas / (betas - machine.m) * (e_m - np.exp(-betas[None, :] * rad[:, None]))
    return (comp * ((sad / geo) ** 2)[:, None]).astype(np.float32)


def _cell_index(voxels: BeamVoxels, geometry: BeamGeometry) -> tuple[_CellIndex, tuple]:
    """The voxels' iso-plane binning (the one the memory estimate counts) and each bixel's cell
    rectangle (lo_u, hi_u, lo_v, hi_v) within the search reach."""
    cells = IsoPlaneCells.covering(voxels.u, voxels.v, geometry.bixel_width)
    cell = cells.cell_of(voxels.u, voxels.v)
    cell_start = np.zeros(cells.count + 1, np.int64)
    np.cumsum(np.bincount(cell, minlength=cells.count), out=cell_start[1:])
    half = search_half_width(geometry.cutoff_mm)
    index = _CellIndex(
        np.argsort(cell, kind="stable"), cell_start, cells.ncu, cells.ncv, cells.u0, cells.v0, cells.width, half**2
    )
    return index, cells.bixel_rectangles(np.asarray(geometry.ray_pos, float), half)


def numba_beam_columns(
    voxels: BeamVoxels,
    geometry: BeamGeometry,
    kernels: ConvolvedKernels,
    machine: PhotonMachine,
    sampling: SamplingSettings,
    beam_index: int,
    store: ColumnStore,
) -> np.ndarray:
    """One beam's dij columns on the CPU (numba), appended to ``store``: returns the counts per bixel."""
    from MedAIPlanLib.dose.dose_kernels import column_upper_bounds, pencil_beam_columns

    comp = _depth_components_np(machine, voxels.rad, np.linalg.norm(voxels.q, axis=1), geometry.sad)
    rp = np.asarray(geometry.ray_pos, float)
    cells, rects = _cell_index(voxels, geometry)
    offsets = np.zeros(len(rp) + 1, np.int64)
    np.cumsum(column_upper_bounds(cells.cell_start, cells.ncu, cells.ncv, *rects), out=offsets[1:])
    slot_rows, slot_vals = store.slots(int(offsets[-1]))
    counts = np.zeros(len(rp), np.int64)
    o = cells.order
    sorted_voxels = (
        np.ascontiguousarray(voxels.q[o], dtype=np.float64),
        np.ascontiguousarray(comp[o], dtype=np.float32),
        np.ascontiguousarray(voxels.rad[o], dtype=np.float64),
        np.ascontiguousarray(voxels.rows[o], dtype=np.int32),
    )
    bixels = (rp, *rects, _bixel_rotations(rp, geometry.sad), float(geometry.sad), float(geometry.cutoff_mm) ** 2)
    tables = (
        np.ascontiguousarray(kernels.values_last.cpu().numpy(), dtype=np.float32),
        float(kernels.start_mm),
        float(kernels.res_mm),
    )
    sampling_args = (
        bool(sampling.enabled),
        float(sampling.core_radius(geometry.bixel_width)) ** 2,
        SAMPLING_DEPTH_MM,
        float(sampling.rel_threshold),
        int(sampling.seed * 7919 + beam_index),
    )
    pencil_beam_columns(
        *sorted_voxels, *cells.kernel_args(), *bixels, *tables, offsets, *sampling_args, slot_rows, slot_vals, counts
    )
    store.append(offsets, counts)
    return counts


def _sample_tail(ray_i, rad_depth, dose, tail, generator, delta_mm: float = SAMPLING_DEPTH_MM):
    """matRad's dij sampling of the lateral tail; returns (keep mask, new doses of the kept entries)."""
    if not bool(tail.any()):
        return torch.ones_like(tail), dose
    cluster = ray_i.long() * 100_000 + torch.ceil(rad_depth / delta_mm).long()
    uniq, inv = torch.unique(cluster[tail], return_inverse=True)
    cmax = torch.zeros(len(uniq), dtype=dose.dtype, device=dose.device).scatter_reduce(
        0, inv, dose[tail], "amax", include_self=False
    )
    thr = cmax[inv]
    r = torch.rand(int(tail.sum()), generator=generator).to(dose.device)
    keep_tail = (r * thr <= dose[tail]) & (thr > 0)
    keep = ~tail
    keep_idx = torch.nonzero(tail, as_tuple=True)[0][keep_tail]
    keep[keep_idx] = True
    new = dose.clone()
    new[keep_idx] = thr[keep_tail]
    return keep, new[keep]


def torch_beam_columns(
    voxels: BeamVoxels,
    geometry: BeamGeometry,
    kernels: ConvolvedKernels,
    machine: PhotonMachine,
    sampling: SamplingSettings,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[list, list, list]:
    """One beam's dij columns with torch on ``device``, a few million (bixel, voxel) pairs at a time:
    lists of (rows, counts per bixel, float32 values) per chunk of bixels, each chunk in CSC order.
    ``generator`` (CPU) draws the sampling's random numbers."""
    q = torch.as_tensor(voxels.q, dtype=torch.float32, device=device)
    uu = torch.as_tensor(voxels.u, dtype=torch.float32, device=device)
    vv = torch.as_tensor(voxels.v, dtype=torch.float32, device=device)
    geo_t = torch.as_tensor(np.linalg.norm(voxels.q, axis=1), dtype=torch.float32, device=device)
    rad_t = torch.as_tensor(voxels.rad, dtype=torch.float32, device=device)
    comp = depth_components(machine, rad_t, geo_t, geometry.sad)
    rp_t = torch.as_tensor(geometry.ray_pos, dtype=torch.float32, device=device)
    sad, cutoff = geometry.sad, geometry.cutoff_mm
    slack = (cutoff * 1.02 + 1.0) ** 2
    chunk = max(1, int(4_000_000 // max(1, len(voxels.rows))))
    rows, counts, vals = [], [], []
    for a in range(0, len(rp_t), chunk):
        r = rp_t[a : a + chunk]
        d2 = (uu[None, :] - r[:, 0:1]) ** 2 + (vv[None, :] - r[:, 1:2]) ** 2
        ray_i, vox_i = torch.nonzero(d2 <= slack, as_tuple=True)
        lx, lz = iso_lateral_offsets(q[vox_i], r[ray_i], sad)
        keep = lx * lx + lz * lz <= cutoff * cutoff
        ray_i, vox_i, lx, lz = ray_i[keep], vox_i[keep], lx[keep], lz[keep]
        dose = torch.clamp((interpolate_kernels(kernels, lx, lz) * comp[vox_i]).sum(dim=1), min=0.0)
        if sampling.enabled and dose.numel():
            lat2 = (lx * lx + lz * lz) * (geo_t[vox_i] / sad) ** 2  # un-projected, as matRad
            tail = lat2 > sampling.core_radius(geometry.bixel_width) ** 2
            keep, dose = _sample_tail(ray_i, rad_t[vox_i], dose, tail, generator)
            ray_i, vox_i = ray_i[keep], vox_i[keep]
        if sampling.rel_threshold > 0 and dose.numel():
            cmax = torch.zeros(len(r), dtype=dose.dtype, device=device).scatter_reduce(0, ray_i, dose, "amax")
            keep = dose >= sampling.rel_threshold * cmax[ray_i]
            ray_i, vox_i, dose = ray_i[keep], vox_i[keep], dose[keep]
        order = torch.argsort(ray_i, stable=True).cpu().numpy()
        rows.append(voxels.rows[vox_i.cpu().numpy()[order]])
        counts.append(np.bincount(ray_i.cpu().numpy(), minlength=len(r)))
        vals.append(dose.cpu().numpy().astype(np.float32)[order])
    return rows, counts, vals
