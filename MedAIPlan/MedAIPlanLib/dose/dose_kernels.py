"""Fused CPU kernels (numba) of the photon dose engine: fan-beam ray marching and the pencil beam.

* :func:`trace_fan` marches a fan of rays from the source through a density volume (trilinear,
  0 outside) and stores the cumulative radiological path every ``store_every`` steps.
* :func:`interp_cum` interpolates that cumulative path at voxel positions (fan u, v, distance s).
* :func:`pencil_beam_columns` computes the dose-influence entries of one beam bixel by bixel (one
  thread per bixel, the voxels found through a bixel-width binning of their iso-plane position),
  with matRad's lateral cut-off and dij sampling, and writes each bixel's entries into its own slot.
* :func:`compact_columns` packs those slots into CSC arrays.

Geometry here is plain arrays: BEV coordinates relative to the source (mm), the density's KJI array
with a 3x4 LPS(mm)->ijk affine. Compiled with ``cache=True``; the first call compiles (seconds).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True, inline="always")
def _trilinear_clamped(arr, a, b, c):
    """Trilinear sample of ``arr`` at continuous indices (a, b, c) along its axes 0, 1, 2, clamped to the grid."""
    na, nb, nc = arr.shape
    a = min(max(a, 0.0), na - 1.0)
    b = min(max(b, 0.0), nb - 1.0)
    c = min(max(c, 0.0), nc - 1.0)
    a0, b0, c0 = min(int(a), max(na - 2, 0)), min(int(b), max(nb - 2, 0)), min(int(c), max(nc - 2, 0))
    fa, fb, fc = a - a0, b - b0, c - c0
    a1, b1, c1 = min(a0 + 1, na - 1), min(b0 + 1, nb - 1), min(c0 + 1, nc - 1)
    x00 = arr[a0, b0, c0] * (1 - fc) + arr[a0, b0, c1] * fc
    x01 = arr[a0, b1, c0] * (1 - fc) + arr[a0, b1, c1] * fc
    x10 = arr[a1, b0, c0] * (1 - fc) + arr[a1, b0, c1] * fc
    x11 = arr[a1, b1, c0] * (1 - fc) + arr[a1, b1, c1] * fc
    return (x00 * (1 - fb) + x01 * fb) * (1 - fa) + (x10 * (1 - fb) + x11 * fb) * fa


@numba.njit(cache=True, inline="always")
def _trilinear(vol, i, j, k, pad):
    """Trilinear sample of a KJI volume at continuous (i, j, k); within ``pad`` voxels outside the grid
    the edge value (the patient goes on past the scan's ends), farther out 0."""
    nk, nj, ni = vol.shape
    if i < -pad[0] or j < -pad[1] or k < -pad[2] or i > ni - 1 + pad[0] or j > nj - 1 + pad[1] or k > nk - 1 + pad[2]:
        return 0.0
    return _trilinear_clamped(vol, k, j, i)


@numba.njit(cache=True, parallel=True)
def trace_fan(vol, affine, source, dirs, s0, step, n_steps, store_every, pad):
    """Cumulative radiological path (nv, nu, n_store) along unit ``dirs`` (nv, nu, 3, LPS) from ``source``.

    Sample n (0-based) sits at s0 + n*step; stored value m is the midpoint-rule integral up to sample
    m*store_every (the sample's own half step excluded). ``pad`` (3,): voxels (i, j, k) beyond the grid
    that still take the edge value, so fan rays just outside the first and last slices see the
    patient and the interpolated depth of edge voxels stays right."""
    nv, nu = dirs.shape[0], dirs.shape[1]
    n_store = (n_steps - 1) // store_every + 1
    out = np.zeros((nv, nu, n_store), np.float32)
    for r in prange(nv * nu):
        a = r // nu
        b = r % nu
        dx, dy, dz = dirs[a, b, 0], dirs[a, b, 1], dirs[a, b, 2]
        run = 0.0
        for n in range(n_steps):
            s = s0 + n * step
            x = source[0] + s * dx
            y = source[1] + s * dy
            z = source[2] + s * dz
            i = affine[0, 0] * x + affine[0, 1] * y + affine[0, 2] * z + affine[0, 3]
            j = affine[1, 0] * x + affine[1, 1] * y + affine[1, 2] * z + affine[1, 3]
            k = affine[2, 0] * x + affine[2, 1] * y + affine[2, 2] * z + affine[2, 3]
            rho = _trilinear(vol, i, j, k, pad)
            if n % store_every == 0:
                out[a, b, n // store_every] = run + rho * step * 0.5
            run += rho * step
    return out


@numba.njit(cache=True, parallel=True)
def interp_cum(cum, fu, fv, fs):
    """Trilinear samples of ``cum`` (nv, nu, ns) at fractional indices (fu, fv, fs), clamped to the border."""
    out = np.empty(len(fu), np.float64)
    for p in prange(len(fu)):
        out[p] = _trilinear_clamped(cum, fv[p], fu[p], fs[p])
    return out


@numba.njit(cache=True, parallel=True)
def column_upper_bounds(cell_start, ncu, ncv, lo_u, hi_u, lo_v, hi_v):
    """Number of candidate voxels of each bixel (the voxels of its cell rectangle)."""
    nb = len(lo_u)
    out = np.zeros(nb, np.int64)
    for b in prange(nb):
        c = 0
        for cv in range(max(lo_v[b], 0), min(hi_v[b], ncv - 1) + 1):
            for cu in range(max(lo_u[b], 0), min(hi_u[b], ncu - 1) + 1):
                cell = cv * ncu + cu
                c += cell_start[cell + 1] - cell_start[cell]
        out[b] = c
    return out


@numba.njit(cache=True, parallel=True)
def pencil_beam_columns(
    q,
    comp,
    rad,
    rows,
    cell_start,
    ncu,
    ncv,
    cell_u0,
    cell_v0,
    cell_w,
    reach2,
    ray_pos,
    lo_u,
    hi_u,
    lo_v,
    hi_v,
    bix_rot,
    sad,
    cutoff2,
    kernel,
    k_start,
    k_res,
    offsets,
    sampling,
    core2,
    delta_mm,
    rel_threshold,
    seed,
    out_rows,
    out_vals,
    counts,
):
    """Dose-influence entries of each bixel b (parallel over bixels) into out[offsets[b]:...].

    ``q`` (N, 3) voxel BEV coordinates relative to the source; ``comp`` (N, 3) depth-dose components
    with the inverse square; ``rad`` radiological depths; ``rows`` dose-grid row of each voxel; all
    sorted by iso-plane cell (ncu x ncv cells of ``cell_w`` mm from (cell_u0, cell_v0)) with
    ``cell_start``; ``lo/hi_u/v`` each bixel's cell rectangle, cells farther than sqrt(``reach2``)
    from the bixel's ``ray_pos`` are skipped; ``bix_rot`` (B, 3, 3) rotation that makes the bixel's ray the beam axis
    (matRad's calcGeoDists); ``kernel`` (n, n, 3) convolved kernels [z, x, k] from ``k_start`` every
    ``k_res`` mm; ``cutoff2`` squared lateral cut-off (mm^2, iso plane). With ``sampling`` the tail
    (un-projected lateral distance^2 > ``core2``) is sampled per (bixel, ceil(depth / delta_mm))
    cluster: kept with probability dose / cluster max and set to the cluster max (matRad).
    """
    nb = len(lo_u)
    nk = kernel.shape[0]
    max_rad = 0.0
    for i in range(len(rad)):
        max_rad = max(max_rad, rad[i])
    n_bins = int(math.ceil(max_rad / delta_mm)) + 2
    for b in prange(nb):
        state = np.uint64(seed * 1000003 + b) * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        base = offsets[b]
        m = bix_rot[b]
        cmax = np.zeros(n_bins, np.float32)
        bins = np.empty(offsets[b + 1] - base, np.int32)
        n = 0
        vmax = 0.0
        for cv in range(max(lo_v[b], 0), min(hi_v[b], ncv - 1) + 1):
            dv = max(cell_v0 + cv * cell_w - ray_pos[b, 1], ray_pos[b, 1] - (cell_v0 + (cv + 1) * cell_w), 0.0)
            for cu in range(max(lo_u[b], 0), min(hi_u[b], ncu - 1) + 1):
                du = max(cell_u0 + cu * cell_w - ray_pos[b, 0], ray_pos[b, 0] - (cell_u0 + (cu + 1) * cell_w), 0.0)
                if du * du + dv * dv > reach2:
                    continue
                cell = cv * ncu + cu
                for p in range(cell_start[cell], cell_start[cell + 1]):
                    x, y, z = q[p, 0], q[p, 1], q[p, 2]
                    inv = sad / (m[1, 0] * x + m[1, 1] * y + m[1, 2] * z)
                    lx = (m[0, 0] * x + m[0, 1] * y + m[0, 2] * z) * inv
                    lz = (m[2, 0] * x + m[2, 1] * y + m[2, 2] * z) * inv
                    lat2 = lx * lx + lz * lz
                    if lat2 > cutoff2:
                        continue
                    fx = (lx - k_start) / k_res
                    fz = (lz - k_start) / k_res
                    if fx < 0.0 or fz < 0.0:
                        continue
                    x0 = int(fx)
                    z0 = int(fz)
                    if x0 >= nk - 1 or z0 >= nk - 1:
                        continue
                    wx = fx - x0
                    wz = fz - z0
                    d = 0.0
                    for k in range(3):
                        top = kernel[z0, x0, k] + wx * (kernel[z0, x0 + 1, k] - kernel[z0, x0, k])
                        bot = kernel[z0 + 1, x0, k] + wx * (kernel[z0 + 1, x0 + 1, k] - kernel[z0 + 1, x0, k])
                        d += comp[p, k] * (top + wz * (bot - top))
                    if d <= 0.0:
                        continue
                    bin_ = -1
                    if sampling:
                        r2 = x * x + y * y + z * z
                        if lat2 * r2 / (sad * sad) > core2:
                            bin_ = int(math.ceil(rad[p] / delta_mm))
                            if d > cmax[bin_]:
                                cmax[bin_] = d
                    out_rows[base + n] = rows[p]
                    out_vals[base + n] = d
                    bins[n] = bin_
                    vmax = max(vmax, d)
                    n += 1
        kept = 0
        thr = rel_threshold * vmax
        for t in range(n):
            d = out_vals[base + t]
            if bins[t] >= 0:
                c = cmax[bins[t]]
                # 64-bit LCG (Knuth's MMIX constants), top 24 bits as a uniform number in [0, 1)
                state = state * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
                if float(state >> np.uint64(40)) * (1.0 / 16777216.0) * c > d:
                    continue
                d = c
            if d < thr:
                continue
            out_rows[base + kept] = out_rows[base + t]
            out_vals[base + kept] = d
            kept += 1
        counts[b] = kept


@numba.njit(cache=True)
def compact_columns(offsets, counts, rows, vals, out_rows, out_vals):
    """Pack each bixel's slot [offsets[b], offsets[b] + counts[b]) contiguously (CSC order)."""
    pos = 0
    for b in range(len(counts)):
        base = offsets[b]
        for t in range(counts[b]):
            out_rows[pos] = rows[base + t]
            out_vals[pos] = vals[base + t]
            pos += 1
