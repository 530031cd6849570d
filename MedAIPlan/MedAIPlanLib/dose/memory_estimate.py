"""Memory a photon plan needs, estimated before the dose-influence matrix is computed.

The estimate counts, per beam, the (voxel, bixel) pairs the pencil-beam kernel will visit: every
dose-grid voxel of the patient is projected to the beam's isocentre plane and binned with the engine's
own binning (:mod:`iso_plane_cells`), so the count is that of the kernel's candidate slots, an upper
bound of the matrix's entries. The counting cells are the engine's (one bixel wide) or, for narrow
bixels, coarser (at most :data:`COUNTING_CELLS` cells), so the estimate itself stays small and fast
(about a second) whatever the bixel width. The bixel count it sees is the beams' own: bixels sit where
target voxel centres project, so it grows as 1/width^2 until it reaches the target's voxel count.
Byte counts (all approximate, peak of the run):

* CT-grid volumes: density (float32, a masked copy), structure masks (1 byte each);
* the engine's fixed start, :data:`ENGINE_FIXED_BYTES`: compiling its numba kernels (first run in a process),
  the convolved pencil-beam kernels and their FFTs;
* ray tracing: one beam's fan of cumulative paths (float32);
* engine working buffers of one beam: per dose voxel its BEV position, projection, depth and their
  sorted copies (~120 B), per iso-plane cell of bixel width 16 B (:func:`iso_plane_cells.binning_bytes`),
  and the near-ray lattice and its dilation (2 B per lattice cell);
* dose-influence matrix: kernel slots of the largest beam (16 B each: row int64, value float32,
  bin int32) + the entries of all beams (12 B each while collected, 8 B in the final CSC matrix,
  briefly both; counted as the pairs within the cut-off circle, i.e. without dij sampling's savings);
* optimisation: the stacked float32/int32 copy of the rows carrying objectives (<= the matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.dose.beams import Beam, voxel_points_lps
from MedAIPlanLib.dose.iso_plane_cells import (
    IsoPlaneCells,
    binning_bytes,
    iso_plane_projection,
    near_ray_lattice_shape,
    search_half_width,
)

COUNTING_CELLS = 1 << 20  # iso-plane cells the estimate bins into at most (8 MiB of int64 counts)
COUNTING_POINTS = 200_000  # dose voxels the estimate projects at most (a regular subsample)
VOXEL_WORKING_BYTES = 120  # per dose voxel and beam: BEV position, projection, depth, sorted copies
DOSE_VOXEL_BYTES = 150  # per dose-grid voxel at least: the engine's working buffers, the dose, resampling
ENGINE_FIXED_BYTES = 192 * 1024**2  # measured: 0.27 GiB peak for a 0.08 GiB TG119 plan in a fresh process


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
    engine_working: int = 0
    engine_fixed: int = ENGINE_FIXED_BYTES

    @property
    def total(self) -> int:
        """Estimated peak bytes: one beam's ray tracing or its kernel slots and working buffers at a time."""
        return int(
            self.ct_volumes
            + self.engine_fixed
            + max(self.ray_tracing, self.dij_slots + self.engine_working)
            + 2.5 * self.dij_matrix
            + self.optimisation
        )

    def as_dict(self) -> dict:
        gib = 1024**3
        return {
            "total_GiB": round(self.total / gib, 3),
            "ct_volumes_GiB": round(self.ct_volumes / gib, 3),
            "ray_tracing_GiB": round(self.ray_tracing / gib, 3),
            "dij_slots_GiB": round(self.dij_slots / gib, 3),
            "engine_working_GiB": round(self.engine_working / gib, 3),
            "engine_fixed_GiB": round(self.engine_fixed / gib, 3),
            "dij_matrix_GiB": round(self.dij_matrix / gib, 3),
            "optimisation_GiB": round(self.optimisation / gib, 3),
            "voxel_bixel_pairs": int(self.pairs),
            "dose_voxels": int(self.dose_voxels),
        }


def _beam_pairs(points: np.ndarray, beam: Beam, cutoff: float) -> tuple[np.ndarray, int]:
    """(kernel candidate pairs per bixel, bytes of the engine's working buffers for this beam).

    The pairs are counted in the engine's cells (:class:`iso_plane_cells.IsoPlaneCells`, one bixel wide),
    or in coarser ones when those would be more than :data:`COUNTING_CELLS`; the engine's own cell count
    still prices its buffers."""
    _, u, v = iso_plane_projection(points, beam)
    engine = IsoPlaneCells.covering(u, v, beam.bixel_width)
    width = (
        beam.bixel_width
        if engine.count <= COUNTING_CELLS
        else beam.bixel_width * float(np.sqrt(engine.count / COUNTING_CELLS)) * 1.01
    )
    cells = IsoPlaneCells.covering(u, v, width)
    counts = np.bincount(cells.cell_of(u, v), minlength=cells.count).reshape(cells.ncv, cells.ncu)
    csum = np.zeros((cells.ncv + 1, cells.ncu + 1), np.int64)
    csum[1:, 1:] = counts.cumsum(0).cumsum(1)
    lo_u, hi_u, lo_v, hi_v = cells.bixel_rectangles(beam.ray_pos, search_half_width(cutoff))
    lo_u, hi_u = np.clip(lo_u, 0, cells.ncu), np.clip(hi_u + 1, 0, cells.ncu)
    lo_v, hi_v = np.clip(lo_v, 0, cells.ncv), np.clip(hi_v + 1, 0, cells.ncv)
    square = csum[hi_v, hi_u] - csum[lo_v, hi_u] - csum[hi_v, lo_u] + csum[lo_v, lo_u]
    lattice = int(np.prod(near_ray_lattice_shape(beam.ray_pos, beam.bixel_width, cutoff)))
    return square * (np.pi / 4.0), binning_bytes(0, engine.count) + 2 * lattice  # the kernel skips the corners


def estimate_plan_memory(
    ct_geometry: Geometry,
    dose_geometry: Geometry,
    dose_mask: np.ndarray,
    beams: list[Beam],
    n_structures: int = 1,
    lateral_cutoff_mm: float = 50.0,
    objective_fraction: float = 1.0,
) -> PlanMemory:
    """Estimate a plan's peak memory (bytes) before computing it.

    ``dose_mask``: dose-grid voxels that get dose (KJI bool on ``dose_geometry``, LPS);
    ``objective_fraction``: share of those voxels that carry objectives (rows of the optimiser).
    """
    n_ct = int(np.prod(ct_geometry.shape_kji))
    ct_bytes = n_ct * (4 + 4 + n_structures + 1)
    points = voxel_points_lps(dose_geometry, dose_mask)
    if len(points) > COUNTING_POINTS:  # a regular subsample is plenty for counting
        step = int(np.ceil(len(points) / COUNTING_POINTS))
        points, scale = points[::step], step
    else:
        scale = 1
    per_beam, working = [], 0
    for b in beams:
        if not (b.num_bixels and len(points)):
            continue
        pairs_b, buffers = _beam_pairs(points, b, lateral_cutoff_mm + b.bixel_width / np.sqrt(2.0))
        per_beam.append(float(pairs_b.sum()) * scale)
        working = max(working, buffers)
    n_dose = int(np.count_nonzero(dose_mask))
    working += VOXEL_WORKING_BYTES * n_dose
    pairs = float(sum(per_beam))
    fan = max(min(ct_geometry.spacing), min(dose_geometry.spacing) / 2.0)
    extent = np.array(ct_geometry.shape_kji) * np.array(ct_geometry.spacing[::-1])
    diag = float(np.linalg.norm(extent))
    rays = (diag / fan) ** 2  # fan covering the patient's projection (upper bound)
    store = diag / (fan / 2.0)
    ray_bytes = int(rays * store * 4)
    slots = int(max(per_beam, default=0.0) / (np.pi / 4.0) * 16)  # the kernel reserves the full square
    dij_bytes = int(pairs * 8)  # kept <= the circle's pairs
    return PlanMemory(
        ct_bytes, ray_bytes, slots, dij_bytes, int(dij_bytes * objective_fraction * 1.5), int(pairs), n_dose, working
    )


def memory_limit_bytes(memory_limit_gb: float | None) -> int | None:
    """The user's memory limit in bytes (None: none given); a limit that is not a positive number of GiB is refused."""
    if memory_limit_gb is None:
        return None
    if not memory_limit_gb > 0:
        raise ValueError(f"The memory limit must be a positive number of GiB, got {memory_limit_gb}.")
    return int(memory_limit_gb * 1024**3)


def check_dose_grid_size(shape_kji, dose_grid_mm, limit_bytes: int | None) -> None:
    """``ValueError`` when a dose grid of ``shape_kji`` voxels alone (:data:`DOSE_VOXEL_BYTES` each) is over
    ``limit_bytes``: checked from its shape, before anything is resampled onto it."""
    voxels = int(np.prod([int(n) for n in shape_kji], dtype=np.float64))
    need = voxels * DOSE_VOXEL_BYTES
    if limit_bytes and need > limit_bytes:
        grid = "CT-grid" if dose_grid_mm is None else f"{float(dose_grid_mm):g} mm"
        raise ValueError(
            f"A {grid} dose grid has {voxels:,} voxels, which alone need about "
            f"{need / 1024**3:.1f} GiB (before any dose-influence matrix) but only "
            f"{limit_bytes / 1024**3:.1f} GiB are allowed (the free memory or --memory-limit-gb); use "
            "a coarser dose grid (--dose-grid, typically 2.5-5 mm) or wider bixels (--bixel-width) "
            "for a smaller plan."
        )


def memory_sentence(estimate: PlanMemory, limit_bytes: int | None, limit_given: bool = False) -> str:
    """ "The plan needs about N GiB (parts) but only M GiB ...": the estimate against the limit, in GiB."""
    g = estimate.as_dict()
    against = ""
    if limit_bytes:
        source = "the --memory-limit-gb limit" if limit_given else "available now (set --memory-limit-gb to change)"
        against = (
            f" but only {limit_bytes / 1024**3:.1f} GiB are {source}"
            if estimate.total > limit_bytes
            else f" ({limit_bytes / 1024**3:.1f} GiB are {source})"
        )
    return (
        f"The plan needs about {g['total_GiB']:.1f} GiB ({g['voxel_bixel_pairs']:,} voxel-bixel pairs: "
        f"dose-influence matrix {g['dij_matrix_GiB']:.1f} GiB, kernel slots and engine buffers "
        f"{g['dij_slots_GiB'] + g['engine_working_GiB']:.1f} GiB, ray tracing {g['ray_tracing_GiB']:.1f} GiB, "
        f"CT volumes {g['ct_volumes_GiB']:.1f} GiB){against}"
    )


def refusal_message(
    estimate: PlanMemory,
    limit_bytes: int | None,
    bixel_width_mm: float,
    dose_grid_mm,
    n_beams: int,
    limit_given: bool = False,
    reason: str | None = None,
) -> str:
    """One line: ``reason`` (when the plan is refused for another reason, e.g. its bixel width), the estimate
    (GiB) against the limit and, when over it, what to change (--bixel-width, --dose-grid, --memory-limit-gb,
    --auto-dose-grid)."""
    sentence = memory_sentence(estimate, limit_bytes, limit_given)
    prefix = f"{reason} " if reason else ""
    if not limit_bytes or estimate.total <= limit_bytes:
        return f"{prefix}{sentence}."
    return (
        f"{prefix}{sentence}; use wider bixels (--bixel-width, now {bixel_width_mm:g} mm; typically 5), a "
        f"coarser dose grid (--dose-grid, now {dose_grid_mm or 'the CT grid'} mm, e.g. --dose-grid 5) or fewer "
        f"beams ({n_beams}), let --auto-dose-grid choose a coarser dose grid automatically, or raise "
        "--memory-limit-gb if more memory is really free."
    )


def out_of_memory_message(estimate: dict | None, what: str = "planning") -> str:
    """One line for a ``MemoryError`` met while ``what``: the estimate (GiB) made before, the memory free now,
    and what to change."""
    free = available_memory_bytes()
    known = f"estimated {estimate['total_GiB']:.1f} GiB" if estimate else "no estimate made before"
    now = f", {free / 1024**3:.1f} GiB free now" if free else ""
    return (
        f"Out of memory while {what} ({known}{now}); use wider bixels (--bixel-width), a coarser dose grid "
        "(--dose-grid) or fewer beams, or give --memory-limit-gb below the memory this machine can really "
        "spare so that such a plan is refused before it starts."
    )


def explains_memory_errors(method):
    """Decorator of a Logic method: a ``MemoryError`` inside it becomes one clear line
    (:func:`out_of_memory_message`) with the estimate the method left in ``self.memory_estimate``."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self.memory_estimate = None
        try:
            return method(self, *args, **kwargs)
        except MemoryError as error:
            raise MemoryError(out_of_memory_message(self.memory_estimate, f"running {method.__name__}")) from error

    return wrapper


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
