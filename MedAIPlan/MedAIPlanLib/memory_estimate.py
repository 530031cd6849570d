"""Memory a photon plan needs, estimated before the dose-influence matrix is computed.

The estimate counts, per beam, the (voxel, bixel) pairs the pencil-beam kernel will visit: every
dose-grid voxel of the patient is projected to the beam's isocentre plane and binned like the kernel
does (:func:`dose_influence.compute_dij`), so the count is that of the kernel's candidate slots, an
upper bound of the matrix's entries. Byte counts (all approximate, peak of the run):

* CT-grid volumes: density (float32, a masked copy), structure masks (1 byte each);
* ray tracing: one beam's fan of cumulative paths (float32);
* dose-influence matrix: kernel slots of the largest beam (16 B each: row int64, value float32,
  bin int32) + the entries of all beams (12 B each while collected, 8 B in the final CSC matrix,
  briefly both; counted as the pairs within the cut-off circle, i.e. without dij sampling's savings);
* optimisation: the stacked float32/int32 copy of the rows carrying objectives (<= the matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedAICommonLib.geometry import Geometry

from .beams import Beam, voxel_points_lps


@dataclass
class PlanMemory:
    """Estimated bytes of each part of a plan run and their total (see module docstring)."""

    ct_volumes: int
    ray_tracing: int
    dij_slots: int
    dij_matrix: int
    optimisation: int
    pairs: int
    dose_voxels: int

    @property
    def total(self) -> int:
        return int(self.ct_volumes + max(self.ray_tracing, self.dij_slots) + 2.5 * self.dij_matrix
                   + self.optimisation)

    def as_dict(self) -> dict:
        gib = 1024 ** 3
        return {"total_GiB": round(self.total / gib, 3), "ct_volumes_GiB": round(self.ct_volumes / gib, 3),
                "ray_tracing_GiB": round(self.ray_tracing / gib, 3), "dij_slots_GiB": round(self.dij_slots / gib, 3),
                "dij_matrix_GiB": round(self.dij_matrix / gib, 3),
                "optimisation_GiB": round(self.optimisation / gib, 3), "voxel_bixel_pairs": int(self.pairs),
                "dose_voxels": int(self.dose_voxels)}


def _beam_pairs(points: np.ndarray, beam: Beam, cutoff: float) -> np.ndarray:
    """Kernel candidate slots per bixel (same binning as the kernel)."""
    q = (points - beam.source) @ beam.rotation
    u = q[:, 0] * beam.sad / q[:, 1]
    v = q[:, 2] * beam.sad / q[:, 1]
    cw = float(beam.bixel_width)
    u0, v0 = float(u.min()), float(v.min())
    cu = np.floor((u - u0) / cw).astype(np.int64)
    cv = np.floor((v - v0) / cw).astype(np.int64)
    ncu, ncv = int(cu.max()) + 1, int(cv.max()) + 1
    counts = np.bincount(cv * ncu + cu, minlength=ncu * ncv).reshape(ncv, ncu)
    csum = np.zeros((ncv + 1, ncu + 1), np.int64)
    csum[1:, 1:] = counts.cumsum(0).cumsum(1)
    half = cutoff * 1.05 + 1.0
    rp = np.asarray(beam.ray_pos, float)
    lo_u = np.clip(np.floor((rp[:, 0] - half - u0) / cw).astype(np.int64), 0, ncu)
    hi_u = np.clip(np.floor((rp[:, 0] + half - u0) / cw).astype(np.int64) + 1, 0, ncu)
    lo_v = np.clip(np.floor((rp[:, 1] - half - v0) / cw).astype(np.int64), 0, ncv)
    hi_v = np.clip(np.floor((rp[:, 1] + half - v0) / cw).astype(np.int64) + 1, 0, ncv)
    square = csum[hi_v, hi_u] - csum[lo_v, hi_u] - csum[hi_v, lo_u] + csum[lo_v, lo_u]
    return square * (np.pi / 4.0)          # the kernel skips the cells outside the circle


def estimate_plan_memory(ct_geometry: Geometry, dose_geometry: Geometry, dose_mask: np.ndarray, beams: list[Beam],
                         n_structures: int = 1, lateral_cutoff_mm: float = 50.0,
                         objective_fraction: float = 1.0) -> PlanMemory:
    """Estimate a plan's peak memory (bytes) before computing it.

    ``dose_mask``: dose-grid voxels that get dose (KJI bool on ``dose_geometry``, LPS);
    ``objective_fraction``: share of those voxels that carry objectives (rows of the optimiser).
    """
    n_ct = int(np.prod(ct_geometry.shape_kji))
    ct_bytes = n_ct * (4 + 4 + n_structures + 1)
    points = voxel_points_lps(dose_geometry, dose_mask)
    if len(points) > 400_000:            # a regular subsample is plenty for counting
        step = int(np.ceil(len(points) / 400_000))
        points, scale = points[::step], step
    else:
        scale = 1
    per_beam = [float(_beam_pairs(points, b, lateral_cutoff_mm + b.bixel_width / np.sqrt(2.0)).sum()) * scale
                if b.num_bixels and len(points) else 0.0 for b in beams]
    pairs = float(sum(per_beam))
    fan = max(min(ct_geometry.spacing), min(dose_geometry.spacing) / 2.0)
    extent = (np.array(ct_geometry.shape_kji) * np.array(ct_geometry.spacing[::-1]))
    diag = float(np.linalg.norm(extent))
    rays = (diag / fan) ** 2                       # fan covering the patient's projection (upper bound)
    store = diag / (fan / 2.0)
    ray_bytes = int(rays * store * 4)
    slots = int(max(per_beam, default=0.0) / (np.pi / 4.0) * 16)     # the kernel reserves the full square
    dij_bytes = int(pairs * 8)                                      # kept <= the circle's pairs
    return PlanMemory(ct_bytes, ray_bytes, slots, dij_bytes, int(dij_bytes * objective_fraction * 1.5), int(pairs),
                      int(np.count_nonzero(dose_mask)))


def available_memory_bytes() -> int | None:
    """Memory the system can give this process now (MemAvailable on Linux), None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
