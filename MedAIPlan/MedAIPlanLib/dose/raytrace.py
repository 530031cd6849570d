"""Radiological depth by ray marching through a relative-electron-density volume (torch, CPU/GPU).

Equivalent to matRad's Siddon ray tracing for dose calculation: the density is integrated along
the straight line from the photon source to every voxel centre. Instead of one Siddon trace per
voxel, a fan of rays (regular grid at the isocentre plane, ``lateral_mm`` apart) is marched from
the source in steps of ``step_mm``; the cumulative radiological path along each fan ray is then
interpolated (trilinear in fan coordinates u, v, distance-from-source) at the voxel centres.
Density is sampled trilinearly, which keeps the integral across an interface the same as with
piecewise-constant voxels; outside the volume the density is 0 (air). All points are LPS (mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from MedAICommonLib.geometry import Geometry


def _normalised_grid(points_lps: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """LPS points (..., 3) -> grid_sample coordinates (x=i, y=j, z=k in [-1, 1], align_corners)."""
    g = geometry.to_space("LPS")
    m = torch.as_tensor(g.physical_to_ijk(), dtype=points_lps.dtype, device=points_lps.device)
    ijk = points_lps @ m[:3, :3].T + m[:3, 3]
    size = torch.tensor(g.shape_kji[::-1], dtype=points_lps.dtype, device=points_lps.device)
    return 2.0 * ijk / torch.clamp(size - 1, min=1) - 1.0


def sample_volume(
    volume: torch.Tensor, geometry: Geometry, points_lps: torch.Tensor, mode: str = "bilinear", edge_pad=None
) -> torch.Tensor:
    """Trilinear (or nearest) samples of a KJI volume at LPS points (N, 3); 0 outside, or with
    ``edge_pad`` (voxels i, j, k) the edge value up to that far outside (as :func:`dose_kernels.trace_fan`)."""
    grid = _normalised_grid(points_lps, geometry)
    if edge_pad is None:
        out = torch.nn.functional.grid_sample(
            volume[None, None], grid.reshape(1, 1, 1, -1, 3), mode=mode, padding_mode="zeros", align_corners=True
        )
        return out.reshape(-1)
    size = torch.tensor(geometry.shape_kji[::-1], dtype=grid.dtype, device=grid.device)
    limit = 1.0 + 2.0 * torch.as_tensor(
        np.asarray(edge_pad, float), dtype=grid.dtype, device=grid.device
    ) / torch.clamp(size - 1, min=1)
    near = (grid.abs() <= limit).all(dim=-1)
    out = torch.nn.functional.grid_sample(
        volume[None, None], grid.reshape(1, 1, 1, -1, 3), mode=mode, padding_mode="border", align_corners=True
    )
    return out.reshape(-1) * near.reshape(-1)


def nonzero_box(density) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) ijk index bounds (one voxel of slack) of the non-zero density, None when all zero
    (a numpy array or a torch tensor on any device: both engines then march the same samples)."""
    is_tensor = isinstance(density, torch.Tensor)
    d = density != 0 if is_tensor else np.asarray(density)
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = (
            torch.nonzero(d.any(dim=other[1]).any(dim=other[0])).ravel().cpu().numpy()
            if is_tensor
            else np.flatnonzero(d.any(axis=other))
        )
        if len(nz) == 0:
            return None
        bounds.append((nz[0] - 1, nz[-1] + 1))
    (k0, k1), (j0, j1), (i0, i1) = bounds
    return np.array([i0, j0, k0], float), np.array([i1, j1, k1], float)


def _box_distance_range(geometry: Geometry, source: np.ndarray, box=None) -> tuple[float, float]:
    """Nearest and farthest distance (mm) from ``source`` to the volume's box (or the ijk ``box`` (lo, hi))."""
    g = geometry.to_space("LPS")
    n = np.array(g.shape_kji[::-1], float)
    lo, hi = (np.full(3, -0.5), n - 0.5) if box is None else (np.maximum(box[0], -0.5), np.minimum(box[1], n - 0.5))
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    pts = g.index_to_point(corners)
    ijk = g.point_to_index(source)
    inside = np.all(ijk >= lo) and np.all(ijk <= hi)
    d = np.linalg.norm(pts - source, axis=1)
    near = 0.0
    if not inside:  # distance from the source to the box (exact for an axis-aligned box in ijk)
        clamped = np.clip(ijk, lo, hi)
        near = float(np.linalg.norm(g.index_to_point(clamped) - source))
    return near, float(d.max())


def radiological_depth(
    density: np.ndarray | torch.Tensor,
    geometry: Geometry,
    source_lps,
    rotation: np.ndarray,
    sad: float,
    points_lps: np.ndarray,
    step_mm: float | None = None,
    lateral_mm: float | None = None,
    device: str | torch.device = "cpu",
    store_mm: float | None = None,
    engine: str = "auto",
    box="auto",
) -> np.ndarray:
    """Radiological depth (mm water-equivalent) of LPS ``points_lps`` (N, 3) for a point source.

    ``rotation`` maps BEV to LPS (see :mod:`beams`); the beam axis is BEV +y, the fan grid lives on
    the plane at ``sad`` from the source. Returns float64 (N,). On the CPU a fused numba kernel
    marches the fan and keeps the cumulative path every ``store_mm`` (default: the step) along s;
    ``engine`` "torch" runs the GPU code (on ``device``, the CPU too), "auto" numba on the CPU.
    ``box``: the non-zero density's ijk bounds (:func:`nonzero_box`) when the caller traces several
    beams through the same volume; "auto" finds them.
    """
    points = np.asarray(points_lps, float)
    if len(points) == 0:
        return np.zeros(0)
    source = np.asarray(source_lps, float)
    step = float(step_mm or min(geometry.spacing) / 2.0)
    q = (points - source) @ rotation  # BEV, relative to the source
    if np.any(q[:, 1] <= 0):
        raise ValueError("Some voxels lie behind the photon source; increase the SAD or move the isocentre.")
    box = nonzero_box(density) if isinstance(box, str) else box
    fan = _Fan.covering(
        q, sad, step, float(lateral_mm or min(geometry.spacing)), _box_distance_range(geometry, source, box)
    )
    dev = torch.device(device)
    if engine == "numba" or (engine == "auto" and dev.type == "cpu"):
        return _radiological_depth_numba(density, geometry, source, rotation, sad, fan, store_mm)
    return _radiological_depth_torch(density, geometry, source, rotation, sad, fan, dev)


@dataclass(frozen=True, eq=False)
class _Fan:
    """The voxels in fan coordinates (iso-plane ``u``, ``v`` and distance ``s`` from the source, mm)
    and the fan's sample axes covering them (``u_axis``, ``v_axis`` rays, ``s_axis`` every ``step`` mm)."""

    u: np.ndarray
    v: np.ndarray
    s: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    s_axis: np.ndarray
    step: float

    @classmethod
    def covering(cls, q: np.ndarray, sad: float, step: float, lat: float, s_range: tuple[float, float]) -> _Fan:
        """Fan of rays ``lat`` mm apart (iso plane) over BEV points ``q`` (relative to the source), marched
        from the near end of ``s_range`` (the density's box) to the farther point or box end."""
        u = q[:, 0] * sad / q[:, 1]
        v = q[:, 2] * sad / q[:, 1]
        s = np.linalg.norm(q, axis=1)
        s0, s_box = s_range
        s1 = min(float(s.max()), s_box) + step
        u_axis = np.arange(u.min() - 2 * lat, u.max() + 2 * lat + lat / 2, lat)
        v_axis = np.arange(v.min() - 2 * lat, v.max() + 2 * lat + lat / 2, lat)
        s_axis = np.arange(max(s0 - step, 0.0), s1 + step, step)
        return cls(u, v, s, u_axis, v_axis, s_axis, step)


def _radiological_depth_torch(
    density, geometry: Geometry, source, rotation, sad, fan: _Fan, dev: torch.device
) -> np.ndarray:
    """The GPU engine of :func:`radiological_depth`: the fan marched in chunks of steps, then the
    cumulative path sampled trilinearly at the voxels."""
    dt = torch.float32
    u_axis, v_axis, s_axis, step = fan.u_axis, fan.v_axis, fan.s_axis, fan.step
    vol = torch.as_tensor(np.asarray(density, dtype=np.float32), device=dev)
    ut = torch.as_tensor(u_axis, dtype=dt, device=dev)
    vt = torch.as_tensor(v_axis, dtype=dt, device=dev)
    st = torch.as_tensor(s_axis, dtype=dt, device=dev)
    dirs = torch.stack(torch.meshgrid(vt, ut, indexing="ij"), dim=-1)  # (nv, nu, 2) = (v, u)
    d_bev = torch.stack([dirs[..., 1], torch.full_like(dirs[..., 0], float(sad)), dirs[..., 0]], dim=-1)
    d_bev = d_bev / torch.linalg.norm(d_bev, dim=-1, keepdim=True)
    d_lps = d_bev @ torch.as_tensor(rotation.T, dtype=dt, device=dev)  # (nv, nu, 3)
    src = torch.as_tensor(source, dtype=dt, device=dev)
    cum = torch.empty((len(s_axis), len(v_axis), len(u_axis)), dtype=dt, device=dev)
    pad = _edge_pad(geometry.to_space("LPS"), u_axis, v_axis, step)
    running = torch.zeros((len(v_axis), len(u_axis)), dtype=dt, device=dev)
    chunk = max(1, int(4_000_000 // max(1, len(u_axis) * len(v_axis))))
    for a in range(0, len(s_axis), chunk):
        ss = st[a : a + chunk]
        pts = src + ss[:, None, None, None] * d_lps[None]
        rho = sample_volume(vol, geometry, pts.reshape(-1, 3), edge_pad=pad).reshape(len(ss), len(v_axis), len(u_axis))
        c = torch.cumsum(rho, dim=0) * step + running
        cum[a : a + chunk] = c - rho * (step / 2.0)
        running = c[-1]
    # trilinear interpolation of the cumulative path at (u, v, s)
    grid = (
        torch.stack(
            [
                torch.as_tensor(2 * (fan.u - u_axis[0]) / (u_axis[-1] - u_axis[0]) - 1, dtype=dt),
                torch.as_tensor(2 * (fan.v - v_axis[0]) / (v_axis[-1] - v_axis[0]) - 1, dtype=dt),
                torch.as_tensor(2 * (fan.s - s_axis[0]) / (s_axis[-1] - s_axis[0]) - 1, dtype=dt),
            ],
            dim=-1,
        )
        .to(dev)
        .reshape(1, 1, 1, -1, 3)
    )
    out = torch.nn.functional.grid_sample(
        cum[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.reshape(-1).double().cpu().numpy()


def _edge_pad(geometry: Geometry, u_axis, v_axis, step: float) -> np.ndarray:
    """Voxels (i, j, k) past the grid where the density keeps its edge value: the fan's lateral spacing
    (at up to 1.5x the SAD) plus a step. A voxel in the first or last slice takes its depth from fan rays
    on both sides of its own ray; those just outside the grid would otherwise see air and the depth
    there would come out some 20 % short."""
    lat = max(
        abs(u_axis[1] - u_axis[0]) if len(u_axis) > 1 else 0.0, abs(v_axis[1] - v_axis[0]) if len(v_axis) > 1 else 0.0
    )
    return (1.5 * lat + step) / np.asarray(geometry.spacing, float)


def _fan_directions(u_axis, v_axis, sad, rotation) -> np.ndarray:
    vv, uu = np.meshgrid(v_axis, u_axis, indexing="ij")
    d = np.stack([uu, np.full_like(uu, float(sad)), vv], axis=-1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.ascontiguousarray(d @ np.asarray(rotation, float).T)


def _radiological_depth_numba(density, geometry: Geometry, source, rotation, sad, fan: _Fan, store_mm) -> np.ndarray:
    """The CPU engine of :func:`radiological_depth`: numba's fused fan march, the cumulative path kept
    every ``store_mm``, then sampled trilinearly at the voxels."""
    from MedAIPlanLib.dose.dose_kernels import interp_cum, trace_fan

    u_axis, v_axis, s_axis, step = fan.u_axis, fan.v_axis, fan.s_axis, fan.step
    g = geometry.to_space("LPS")
    vol = np.ascontiguousarray(np.asarray(density, dtype=np.float32))
    affine = np.ascontiguousarray(g.physical_to_ijk()[:3], dtype=np.float64)
    every = max(1, int(round(float(store_mm or step) / step)))
    cum = trace_fan(
        vol,
        affine,
        np.asarray(source, float),
        _fan_directions(u_axis, v_axis, sad, rotation),
        float(s_axis[0]),
        float(step),
        len(s_axis) + every,
        every,
        _edge_pad(g, u_axis, v_axis, step),
    )
    lat_u = u_axis[1] - u_axis[0] if len(u_axis) > 1 else 1.0
    lat_v = v_axis[1] - v_axis[0] if len(v_axis) > 1 else 1.0
    return interp_cum(
        cum, (fan.u - u_axis[0]) / lat_u, (fan.v - v_axis[0]) / lat_v, (fan.s - s_axis[0]) / (step * every)
    )


def ssd_along_ray(
    density: np.ndarray, geometry: Geometry, source_lps, target_lps, threshold: float = 0.05, step_mm: float = 0.25
) -> float:
    """Source-to-surface distance (mm): first point along source->target with density > threshold.

    Nearest-voxel sampling (the voxel boundary within ``step_mm``), as matRad's ``matRad_computeSSD``.
    Returns NaN when the ray never enters tissue.
    """
    source = np.asarray(source_lps, float)
    target = np.asarray(target_lps, float)
    direction = target - source
    length = np.linalg.norm(direction)
    direction /= length
    s0, s1 = _box_distance_range(geometry, source)
    s = np.arange(s0, s1 + step_mm, step_mm)
    vol = np.asarray(density)
    ijk = np.rint(geometry.to_space("LPS").point_to_index(source + s[:, None] * direction)).astype(np.int64)
    shape_ijk = np.array(vol.shape[::-1])
    ok = np.all((ijk >= 0) & (ijk < shape_ijk), axis=1)
    rho = np.zeros(len(s))
    rho[ok] = vol[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
    hit = np.flatnonzero(rho > threshold)
    return float(s[hit[0]] - step_mm / 2) if len(hit) else float("nan")
