"""Fused CPU kernels (numba) for the non-local means of :mod:`.nonlocal_means` (both modes).

Same definitions as the torch code there (voxelwise NLM; Coupe et al. 2008 blockwise NLM with BM3D-style
aggregation of the overlapping blocks; centre weight = the largest weight; weights ``2**clamp(e, -100, 0)``),
computed without full-size temporaries. Voxelwise: one task per plane, per offset the patch distances
(squared differences summed along k, then box sums along j and i), weights and sums in one row loop.
Blockwise: one task per centre plane (the plane of block centres
``k = kk * step_k``) keeps everything it touches in the L1/L2 cache and loops over the search offsets;
per offset it forms the squared differences of the block's planes, box-sums them at the block centres,
takes the weights (a vectorised ``exp2``) and spreads ``weight * x(v + d)`` over the block's voxels.
Tasks that never write the same voxel (one "colour": blockwise, centre planes more than ``2 p`` apart;
voxelwise, planes more than ``s`` apart) run in parallel Python threads (the kernels release the GIL; no
numba thread pool, so nothing spins between calls), colour after colour: results do not depend on the
thread count.

Arrays are KJI float32; ``xp`` is the input padded by ``p + s`` voxels on every side.
Compiled once per machine (``cache=True``: the first call in a process that finds no cache compiles
for a few seconds; later processes load the cached machine code).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from MedAISegLib.preprocessing.coloured_tasks import run_coloured

_F32 = np.float32
# 2**f = exp(f ln 2) for f in [-0.5, 0.5]: Taylor terms (ln 2)^n / n! up to n = 6 (relative error < 2e-7).
_C1, _C2, _C3 = _F32(0.6931471805599453), _F32(0.2402265069591007), _F32(0.05550410866482158)
_C4, _C5, _C6 = _F32(0.009618129107628477), _F32(0.0013333558146428443), _F32(0.00015403530393381606)
_ONE, _HALF, _TINY = _F32(1.0), _F32(0.5), _F32(1e-12)
_LOWEST = _F32(-100.0)
_ZERO = _F32(0.0)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as float32 (builds ``2**n`` from its exponent bits)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, context.get_value_type(types.int32))
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@njit(cache=True, fastmath=True, inline="always")
def _exp2(e):
    """``2**e`` for float32 ``e`` in [-100, 0] (callers clamp): exponent bits times a polynomial."""
    n = np.floor(e + _HALF)
    f = e - n
    poly = _ONE + f * (_C1 + f * (_C2 + f * (_C3 + f * (_C4 + f * (_C5 + f * _C6)))))
    return poly * _float32_from_bits((np.int64(n) + 127) << 23)


@njit(cache=True, fastmath=True)
def exp2_array(e):
    """``2**e`` elementwise for a float32 array with values in [-100, 0] (exposed for tests)."""
    out = np.empty_like(e)
    for i in range(e.size):
        out.flat[i] = _exp2(e.flat[i])
    return out


@njit(cache=True, fastmath=True, inline="always")
def _spread_i(T, wpad, ni, nic, p, si, R):
    """``T[jc, i] = sum of w[jc, ic]`` over the centres ``ic * si`` within ``p`` of ``i``, where
    ``w[jc, ic] = wpad[jc, R + ic]`` and ``wpad`` has a zero margin of ``R`` (no bound tests).
    Residue-wise: voxel ``i = m * si + q`` gets the centres ``m + t`` with ``|t si - q| <= p``."""
    if si == 1 and p == 1:  # 3-voxel blocks on every voxel along i
        for jc in range(T.shape[0]):
            out, w = T[jc], wpad[jc, R - 1:]
            for i in range(ni):
                out[i] = w[i] + w[i + 1] + w[i + 2]
        return
    if si == 2 and p == 1:  # the default 3-voxel blocks every 2 voxels: constant strides vectorise
        half = ni // 2
        for jc in range(T.shape[0]):
            out, w = T[jc], wpad[jc, R:]
            for m in range(half):
                out[2 * m] = w[m]
                out[2 * m + 1] = w[m] + w[m + 1]
            if ni % 2:
                out[ni - 1] = w[half]
        return
    for jc in range(T.shape[0]):
        out, w = T[jc], wpad[jc]
        for q in range(si):
            lo, hi = -((p - q) // si), (q + p) // si
            count = (ni - q + si - 1) // si
            first = lo + R
            if hi == lo:
                for m in range(count):
                    out[q + m * si] = w[m + first]
            elif hi == lo + 1:
                for m in range(count):
                    out[q + m * si] = w[m + first] + w[m + first + 1]
            else:
                for m in range(count):
                    acc = w[m + first]
                    for t in range(1, hi - lo + 1):
                        acc += w[m + first + t]
                    out[q + m * si] = acc


@njit(cache=True, fastmath=True, inline="always")
def _patch_plane_distances(xp, D, kc, a, b, c, p, s):
    """``D[j', i'] = sum over k in [kc - p, kc + p] of (x(u + d) - x(u))^2``, ``u = (k, j' - p, i' - p)``,
    ``d = (a, b, c)``: the patch distances summed along k only (``xp`` padded by ``p + s``)."""
    gj, gi = D.shape
    pad = p + s
    if p == 1:  # the common 3-voxel patch: the three planes in one pass
        z = kc + pad
        for jj in range(gj):
            m0, m1, m2 = xp[z - 1 + a, jj + s + b, s + c:], xp[z + a, jj + s + b, s + c:], \
                xp[z + 1 + a, jj + s + b, s + c:]
            h0, h1, h2, row = xp[z - 1, jj + s, s:], xp[z, jj + s, s:], xp[z + 1, jj + s, s:], D[jj]
            for ii in range(gi):
                d0, d1, d2 = m0[ii] - h0[ii], m1[ii] - h1[ii], m2[ii] - h2[ii]
                row[ii] = d0 * d0 + d1 * d1 + d2 * d2
        return
    for jj in range(gj):
        for ii in range(gi):
            D[jj, ii] = _ZERO
    for b0 in range(-p, p + 1):
        z = kc + b0 + pad
        for jj in range(gj):
            moved, here, row = xp[z + a, jj + s + b, s + c:], xp[z, jj + s, s:], D[jj]
            for ii in range(gi):
                diff = moved[ii] - here[ii]
                row[ii] += diff * diff


@njit(cache=True, fastmath=True)
def _block_plane(xp, vs, ws, kc, offsets, p, s, sj, si, inv, var2):
    """Accumulate into the blockwise NLM numerator ``vs`` and denominator ``ws`` (both (nk, nj, ni) float32,
    updated in place) the blocks centred on the plane ``k = kc`` (all search offsets).

    ``xp``: input padded by ``p + s``; ``offsets``: (M, 3) int64 search offsets (without 0);
    ``inv = 1 / (h2 ln 2)`` and ``var2`` (box-sum units, float32): weight ``2**clamp((var2 - dist) * inv)``.
    """
    nk, nj, ni = vs.shape
    pad = p + s
    njc = (nj + sj - 1) // sj
    nic = (ni + si - 1) // si
    gj, gi = nj + 2 * p, ni + 2 * p  # squared-difference grid: j' = j + p, i' = i + p
    R = p // si + 1  # reach of a block along i, in centres
    k0, k1 = max(kc - p, 0), min(kc + p + 1, nk)
    D = np.empty((gj, gi), np.float32)
    E = np.empty(gi, np.float32)
    F = np.empty(ni, np.float32)
    dist = np.empty((njc, nic), np.float32)
    wpad = np.zeros((njc, nic + 2 * R), np.float32)  # weights at the centres, zero margin R along i
    T = np.empty((njc, ni), np.float32)
    wrow = np.empty(ni, np.float32)
    wsub = np.zeros((njc, nic), np.float32)
    wmax = np.zeros((njc, nic), np.float32)
    for o in range(offsets.shape[0]):
        a, b, c = offsets[o, 0], offsets[o, 1], offsets[o, 2]
        _patch_plane_distances(xp, D, kc, a, b, c, p, s)
        # Box sums along j at the centre rows, then along i at the centre columns.
        for jc in range(njc):
            j0 = jc * sj
            for ii in range(gi):
                E[ii] = D[j0, ii]
            for q in range(1, 2 * p + 1):
                row = D[j0 + q]
                for ii in range(gi):
                    E[ii] += row[ii]
            drow = dist[jc]
            if si == 2 and p == 1:
                for ic in range(nic):
                    drow[ic] = E[2 * ic] + E[2 * ic + 1] + E[2 * ic + 2]
            elif si == 1 and p == 1:
                for ic in range(nic):
                    drow[ic] = E[ic] + E[ic + 1] + E[ic + 2]
            else:
                for ic in range(nic):
                    drow[ic] = E[ic * si]
                for q in range(1, 2 * p + 1):
                    for ic in range(nic):
                        drow[ic] += E[ic * si + q]
        # Weights at the centres (one contiguous, vectorised loop), kept with a zero margin along i.
        for jc in range(njc):
            drow, wrow_c, srow, mrow = dist[jc], wpad[jc, R:R + nic], wsub[jc], wmax[jc]
            for ic in range(nic):
                w = _exp2(min(max((var2 - drow[ic]) * inv, _LOWEST), _ZERO))
                wrow_c[ic] = w
                srow[ic] += w
                mrow[ic] = max(mrow[ic], w)
        _spread_i(T, wpad, ni, nic, p, si, R)
        # value_sum(v) += (sum of the weights of the blocks containing v) * x(v + d)
        for j in range(nj):
            lo, hi = max(0, (j - p + sj - 1) // sj), min(njc - 1, (j + p) // sj)
            for i in range(ni):
                wrow[i] = T[lo, i]
            for jc in range(lo + 1, hi + 1):
                for i in range(ni):
                    wrow[i] += T[jc, i]
            if k1 - k0 == 3:  # a whole 3-plane block: one pass
                t0, t1, t2 = vs[k0, j], vs[k0 + 1, j], vs[k0 + 2, j]
                v0, v1, v2 = xp[k0 + a + pad, j + b + pad, c + pad:], xp[k0 + 1 + a + pad, j + b + pad, c + pad:], \
                    xp[k0 + 2 + a + pad, j + b + pad, c + pad:]
                for i in range(ni):
                    w = wrow[i]
                    t0[i] += w * v0[i]
                    t1[i] += w * v1[i]
                    t2[i] += w * v2[i]
            else:
                for k in range(k0, k1):
                    target, values = vs[k, j], xp[k + a + pad, j + b + pad, c + pad:]
                    for i in range(ni):
                        target[i] += wrow[i] * values[i]
    # Centre weight (the block's largest weight) and the normalisation, spread over the blocks.
    Tw = np.empty((njc, ni), np.float32)
    for jc in range(njc):
        for ic in range(nic):
            centre = max(wmax[jc, ic], _TINY)
            wpad[jc, R + ic] = centre
            wsub[jc, ic] += centre
    _spread_i(T, wpad, ni, nic, p, si, R)
    for jc in range(njc):
        for ic in range(nic):
            wpad[jc, R + ic] = wsub[jc, ic]
    _spread_i(Tw, wpad, ni, nic, p, si, R)
    for j in range(nj):
        lo, hi = max(0, (j - p + sj - 1) // sj), min(njc - 1, (j + p) // sj)
        for i in range(ni):
            wrow[i] = T[lo, i]
            F[i] = Tw[lo, i]
        for jc in range(lo + 1, hi + 1):
            for i in range(ni):
                wrow[i] += T[jc, i]
                F[i] += Tw[jc, i]
        for k in range(k0, k1):
            target, weights, values = vs[k, j], ws[k, j], xp[k + pad, j + pad, pad:]
            for i in range(ni):
                target[i] += wrow[i] * values[i]
                weights[i] += F[i]


@njit(cache=True, nogil=True)
def blockwise_planes(xp, vs, ws, centre_planes, offsets, p, s, sk, sj, si, inv, var2):
    """:func:`_block_plane` for the centre planes ``centre_planes * sk``, one after the other (releases the
    GIL: calls on planes whose blocks do not overlap may run in parallel threads)."""
    for t in range(centre_planes.shape[0]):
        _block_plane(xp, vs, ws, centre_planes[t] * sk, offsets, p, s, sj, si, inv, var2)


@njit(cache=True, fastmath=True, inline="always")
def _accumulate(target, weights, largest, w, values, n):
    """``target += w values``, ``weights += w``, ``largest = max(largest, w)`` over ``n`` elements (two loops:
    few enough arrays per loop for LLVM's run-time alias checks, so both vectorise)."""
    for i in range(n):
        target[i] += w[i] * values[i]
        weights[i] += w[i]
    for i in range(n):
        largest[i] = max(largest[i], w[i])


@njit(cache=True, fastmath=True)
def _voxel_plane(xp, vs, ws, wmax, k, offsets, p, s, inv, var2):
    """Voxelwise NLM sums for the voxels ``v`` of plane ``k`` (``-s <= k < nk``; rows and columns grown by
    ``s``) and the half offsets ``d`` (one of each pair {d, -d}, ``d_k >= 0``): with
    ``w = 2**clamp((var2 - dist_d(v)) * inv)`` (as :func:`_block_plane`), ``v`` gets ``w x(v + d)`` and
    ``v + d`` gets ``w x(v)`` (when inside the volume) in ``vs``, ``ws`` (weights) and ``wmax`` (largest
    weight). Writes the planes ``k .. k + s`` only. ``xp``: input padded by ``p + 2 s`` as the torch code
    (reflection by ``p + s``, then edge replication by ``s``)."""
    nk, nj, ni = vs.shape
    pad = p + 2 * s
    D = np.empty((nj + 2 * s + 2 * p, ni + 2 * s + 2 * p), np.float32)
    E = np.empty(ni + 2 * s + 2 * p, np.float32)
    dist = np.empty(ni + 2 * s, np.float32)
    for o in range(offsets.shape[0]):
        a, b, c = offsets[o, 0], offsets[o, 1], offsets[o, 2]
        _patch_plane_distances(xp, D, k + s, a, b, c, p, s)  # D[j + s + p, i + s + p] for the grown plane
        for je in range(nj + 2 * s):  # row j = je - s
            j = je - s
            forward = k >= 0 and 0 <= j < nj
            backward = 0 <= k + a < nk and 0 <= j + b < nj
            if not (forward or backward):
                continue
            for ii in range(E.shape[0]):
                E[ii] = D[je, ii]
            for q in range(1, 2 * p + 1):
                row = D[je + q]
                for ii in range(E.shape[0]):
                    E[ii] += row[ii]
            for i in range(dist.shape[0]):
                dist[i] = E[i]
            for q in range(1, 2 * p + 1):
                for i in range(dist.shape[0]):
                    dist[i] += E[i + q]
            for i in range(dist.shape[0]):
                dist[i] = _exp2(min(max((var2 - dist[i]) * inv, _LOWEST), _ZERO))
            if forward:  # v = (k, j, i) gets x(v + d)
                target, weights, largest = vs[k, j], ws[k, j], wmax[k, j]
                values, w = xp[k + a + pad, j + b + pad, c + pad:], dist[s:]
                _accumulate(target, weights, largest, w, values, ni)
            if backward:  # u = v + d = (k + a, j + b, i) gets x(v) = x(k, j, i - c)
                target, weights, largest = vs[k + a, j + b], ws[k + a, j + b], wmax[k + a, j + b]
                values, w = xp[k + pad, j + pad, pad - c:], dist[s - c:]
                _accumulate(target, weights, largest, w, values, ni)


@njit(cache=True, nogil=True)
def voxelwise_planes(xp, vs, ws, wmax, planes, offsets, p, s, inv, var2):
    """:func:`_voxel_plane` for the planes ``planes``, one after the other (releases the GIL: calls on planes
    more than ``s`` apart may run in parallel threads)."""
    for t in range(planes.shape[0]):
        _voxel_plane(xp, vs, ws, wmax, planes[t], offsets, p, s, inv, var2)


def _checked(xp, shape, margin: int, offsets, s: int):
    """The kernels index without bound checks: refuse a padded array or offsets that do not fit."""
    xp = np.ascontiguousarray(xp, dtype=np.float32)
    expected = tuple(int(n) + 2 * margin for n in shape)
    if xp.shape != expected:
        raise ValueError(f"NLM kernel: the padded volume must have shape {expected} (padding {margin}), got {xp.shape}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1, 3)
    if offsets.size and np.abs(offsets).max() > s:
        raise ValueError(f"NLM kernel: search offsets must lie within +-{s} voxels")
    return xp, offsets


def voxelwise(xp: np.ndarray, shape, p: int, s: int, inv: float, var2: float, offsets: np.ndarray,
              planes_per_call: int, threads: int, progress=None) -> np.ndarray:
    """Voxelwise NLM of the (nk, nj, ni) volume whose padded copy (by ``p + 2 s``: reflection by ``p + s``,
    then edge replication by ``s``, float32) is ``xp``; ``offsets``: one of each pair {d, -d} of the search
    window with ``d_k >= 0`` (the symmetry ``dist_-d(v + d) = dist_d(v)`` halves the work); centre weight =
    the largest weight. Same threading and progress as :func:`blockwise`. Returns the float32 estimate."""
    xp, offsets = _checked(xp, shape, p + 2 * s, offsets, s)
    if offsets.size and offsets[:, 0].min() < 0:
        raise ValueError("NLM kernel: voxelwise offsets must be the half window with d_k >= 0")
    vs = np.zeros(tuple(int(n) for n in shape), np.float32)
    ws, wmax = np.zeros_like(vs), np.zeros_like(vs)
    planes = np.arange(-s, vs.shape[0], dtype=np.int64)  # planes k < 0 only credit voxels of planes k + d_k
    # A task writes the planes k .. k + s: tasks s + 1 apart never collide.
    run_coloured(voxelwise_planes, (xp, vs, ws, wmax), [planes[colour::s + 1] for colour in range(s + 1)],
                 (offsets, p, s, _F32(inv), _F32(var2)), threads, progress, planes_per_call)
    centre = np.maximum(wmax, _TINY)
    m = p + 2 * s
    return (vs + centre * xp[m:m + vs.shape[0], m:m + vs.shape[1], m:m + vs.shape[2]]) / (ws + centre)


def blockwise(xp: np.ndarray, shape, p: int, s: int, steps, inv: float, var2: float, offsets: np.ndarray,
              planes_per_call: int, threads: int, progress=None) -> np.ndarray:
    """Blockwise NLM of the (nk, nj, ni) volume whose padded copy (by ``p + s``, float32) is ``xp``.

    Runs the centre planes in groups of mutually non-overlapping blocks (at most ``planes_per_call`` per call)
    on ``threads`` threads, calling ``progress(fraction)`` between calls (it may raise to cancel).
    Returns the float32 estimate (numerator / denominator).
    """
    sk, sj, si = (int(n) for n in steps)
    nk = int(shape[0])
    xp, offsets = _checked(xp, shape, p + s, offsets, s)
    vs = np.zeros(tuple(int(n) for n in shape), np.float32)
    ws = np.zeros_like(vs)
    centres = np.arange((nk + sk - 1) // sk, dtype=np.int64)
    colours = 2 * p // sk + 1  # centre planes this many apart have disjoint blocks along k
    run_coloured(blockwise_planes, (xp, vs, ws), [centres[colour::colours] for colour in range(colours)],
                 (offsets, p, s, sk, sj, si, _F32(inv), _F32(var2)), threads, progress, planes_per_call)
    return vs / ws
