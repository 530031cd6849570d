"""Binning of dose-grid voxels by their projection onto a beam's isocentre plane.

The pencil-beam engine (:func:`dose_influence.compute_dij`) finds the voxels near each bixel through
square cells on the isocentre plane (BEV x = u, z = v at the SAD, mm): a voxel belongs to the cell
of its central projection, and a bixel visits the rectangle of cells within ``half`` mm of its ray
position. The memory estimate (:mod:`memory_estimate`) counts the same cells and rectangles, so both
use this one definition. The engine's cells are one bixel wide; its working arrays grow with the
number of cells, ``(projected extent / width)^2`` (see :func:`binning_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedAIPlanLib.dose.beams import Beam


def iso_plane_projection(points_lps: np.ndarray, beam: Beam) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, u, v): BEV coordinates relative to the source (N, 3) and the central projection of ``points_lps``
    (LPS mm) onto the isocentre plane (u along BEV x, v along BEV z, mm)."""
    q = (np.asarray(points_lps, float) - beam.source) @ beam.rotation
    u = q[:, 0] * beam.sad / q[:, 1]
    v = q[:, 2] * beam.sad / q[:, 1]
    return q, u, v


@dataclass(frozen=True)
class IsoPlaneCells:
    """A grid of ``ncu`` x ``ncv`` square cells of ``width`` mm from (``u0``, ``v0``) on the isocentre plane."""

    u0: float
    v0: float
    width: float
    ncu: int
    ncv: int

    @classmethod
    def covering(cls, u: np.ndarray, v: np.ndarray, width: float) -> IsoPlaneCells:
        """The cells of ``width`` mm covering the projections ``u``, ``v`` (only their extremes are read)."""
        width = float(width)
        u0, v0 = float(np.min(u)), float(np.min(v))
        ncu = int(np.floor((float(np.max(u)) - u0) / width)) + 1
        ncv = int(np.floor((float(np.max(v)) - v0) / width)) + 1
        return cls(u0, v0, width, ncu, ncv)

    @property
    def count(self) -> int:
        """Number of cells."""
        return self.ncu * self.ncv

    def cell_of(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Flat cell index (``cv * ncu + cu``, int64) of each projection."""
        cu = np.floor((u - self.u0) / self.width).astype(np.int64)
        cv = np.floor((v - self.v0) / self.width).astype(np.int64)
        return cv * self.ncu + cu

    def bixel_rectangles(self, ray_pos: np.ndarray, half: float) -> tuple[np.ndarray, ...]:
        """(lo_u, hi_u, lo_v, hi_v): inclusive cell ranges within ``half`` mm of each bixel's ray position
        (``ray_pos`` (B, 2), mm); not clipped to the grid."""
        rp = np.asarray(ray_pos, float)
        lo_u = np.floor((rp[:, 0] - half - self.u0) / self.width).astype(np.int64)
        hi_u = np.floor((rp[:, 0] + half - self.u0) / self.width).astype(np.int64)
        lo_v = np.floor((rp[:, 1] - half - self.v0) / self.width).astype(np.int64)
        hi_v = np.floor((rp[:, 1] + half - self.v0) / self.width).astype(np.int64)
        return lo_u, hi_u, lo_v, hi_v


def search_half_width(cutoff_mm: float) -> float:
    """Half side (mm) of the square of cells a bixel visits: its lateral cut-off with 5 % and 1 mm slack."""
    return float(cutoff_mm) * 1.05 + 1.0


def binning_bytes(n_voxels: int, n_cells: int) -> int:
    """Bytes of the engine's binning of one beam: per cell the start offsets and the counts (int64 each),
    per voxel the cell index and the sort order (int64 each) and the sorted copies of its BEV position,
    depth components, depth and row (24 + 12 + 8 + 4 bytes)."""
    return int(16 * n_cells + (16 + 48) * n_voxels)


def near_ray_lattice(ray_pos: np.ndarray, width: float, cutoff_mm: float) -> tuple[np.ndarray, np.ndarray, int, tuple]:
    """(lattice, lo, r, shape) of the engine's near-ray search: each bixel's ray position on a ``width``
    lattice (``lattice`` (B, 2) int), a margin of ``r`` lattice steps (the cut-off plus 2), the lattice's
    first index ``lo`` and the ``shape`` of the boolean grid that the search dilates by ``r``."""
    lattice = np.round(np.asarray(ray_pos, float) / width).astype(int)
    r = int(np.ceil(cutoff_mm / width)) + 2
    lo = lattice.min(axis=0) - r
    shape = tuple(int(n) for n in lattice.max(axis=0) - lo + r + 1)
    return lattice, lo, r, shape


def near_ray_lattice_shape(ray_pos: np.ndarray, width: float, cutoff_mm: float) -> tuple:
    """Shape of the near-ray search grid (see :func:`near_ray_lattice`), (0, 0) without bixels."""
    if len(ray_pos) == 0:
        return (0, 0)
    return near_ray_lattice(ray_pos, width, cutoff_mm)[3]
