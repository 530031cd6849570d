"""CPU kernels (numba) of the fluence optimiser: the stacked objective matrix and its one-pass gradient.

* :func:`count_stacked` / :func:`fill_stacked` build the CSR matrix of the objective rows straight
  from the dose-influence matrix's CSC arrays (a dose-grid voxel may feed several stacked rows),
  scaled and with compact column indices, without a whole-matrix CSR copy in between.
* :func:`fused_objective` computes, in one pass over each row, its dose ``d_r = A_r w``, the
  separable objectives on it (squared over/under dose and deviation) and adds ``g_r A_r`` to the
  gradient while the row is still in cache: half the memory traffic of a mat-vec plus its transpose.
  Rows of structures whose objectives are not separable get their dose only (see
  :mod:`objective_matrix`).
* :func:`csr_rmatvec_serial` adds ``A^T g`` over chosen rows (those structures' gradient).

Objective kinds (``kind``): 0 squared overdose, 1 squared underdose, 2 squared deviation; ``coef``
is penalty / voxel count, so a row adds ``coef * r^2`` to the value and ``2 coef r`` to ``g_r``.
These three are defined in :mod:`objectives` (numpy or torch); the fused pass repeats them per row
because it is 2.4-2.6 times faster on one thread than the definitions on scipy products
(``bench/bench_objectives.py``), and ``test_plan_objective_kernels.py`` holds it equal to them.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

OVERDOSE, UNDERDOSE, DEVIATION = 0, 1, 2


@numba.njit(cache=True)
def count_stacked(col_ptr, row_idx, map_ptr, map_rows, n_stacked):
    """Entries per stacked row: dose-grid row ``i`` feeds the stacked rows ``map_rows[map_ptr[i]:map_ptr[i+1]]``."""
    counts = np.zeros(n_stacked, np.int64)
    for p in range(col_ptr[-1]):
        i = row_idx[p]
        for q in range(map_ptr[i], map_ptr[i + 1]):
            counts[map_rows[q]] += 1
    return counts


@numba.njit(cache=True)
def fill_stacked(col_ptr, row_idx, vals, map_ptr, map_rows, indptr, scale, out_indices, out_data):
    """Fill the stacked CSR (``indptr`` from :func:`count_stacked`); columns come out sorted per row."""
    nxt = indptr[:-1].copy()
    for j in range(len(col_ptr) - 1):
        for p in range(col_ptr[j], col_ptr[j + 1]):
            i = row_idx[p]
            v = np.float32(vals[p] * scale)
            for q in range(map_ptr[i], map_ptr[i + 1]):
                s = map_rows[q]
                out_indices[nxt[s]] = j
                out_data[nxt[s]] = v
                nxt[s] += 1


@numba.njit(cache=True)
def row_group_sums(indptr, indices, data, group_of, n_groups):
    """Per row: the sum of its entries and the sums over each group of columns (float64)."""
    n = len(indptr) - 1
    total = np.zeros(n)
    per_group = np.zeros((n, n_groups))
    for r in range(n):
        for p in range(indptr[r], indptr[r + 1]):
            v = data[p]
            total[r] += v
            per_group[r, group_of[indices[p]]] += v
    return total, per_group


@numba.njit(cache=True)
def _fused_range(indptr, indices, data, w, rows, lo, hi, row_group, grp_ptr, kind, dose, coef, d, grad):
    f = 0.0
    for t in range(lo, hi):
        r = rows[t]
        p0, p1 = indptr[r], indptr[r + 1]
        acc = 0.0
        for p in range(p0, p1):
            acc += data[p] * w[indices[p]]
        d[r] = acc
        g = 0.0
        grp = row_group[r]
        for o in range(grp_ptr[grp], grp_ptr[grp + 1]):
            res = acc - dose[o]
            if (kind[o] == OVERDOSE and res <= 0.0) or (kind[o] == UNDERDOSE and res >= 0.0):
                continue
            f += coef[o] * res * res
            g += 2.0 * coef[o] * res
        if g != 0.0:
            for p in range(p0, p1):
                grad[indices[p]] += data[p] * g
    return f


@numba.njit(cache=True, parallel=True)
def fused_objective(indptr, indices, data, w, rows, row_group, grp_ptr, kind, dose, coef, d, n_chunks):
    """(value, gradient) of the separable objectives over ``rows``; writes their doses into ``d``.

    ``n_chunks`` threads each take a run of rows with about the same number of entries."""
    n_rows = len(rows)
    cum = np.zeros(n_rows + 1, np.int64)
    for t in range(n_rows):
        cum[t + 1] = cum[t] + indptr[rows[t] + 1] - indptr[rows[t]]
    bounds = np.zeros(n_chunks + 1, np.int64)
    for c in range(1, n_chunks):
        bounds[c] = np.searchsorted(cum, cum[-1] * c // n_chunks)
    bounds[n_chunks] = n_rows
    values = np.zeros(n_chunks)
    grads = np.zeros((n_chunks, len(w)))
    for c in prange(n_chunks):
        values[c] = _fused_range(
            indptr, indices, data, w, rows, bounds[c], bounds[c + 1], row_group, grp_ptr, kind, dose, coef, d, grads[c]
        )
    return values.sum(), grads.sum(axis=0)


@numba.njit(cache=True)
def fused_objective_serial(indptr, indices, data, w, rows, row_group, grp_ptr, kind, dose, coef, d):
    """Single-threaded :func:`fused_objective` (few rows: a thread start costs more than it saves)."""
    grad = np.zeros(len(w))
    f = _fused_range(indptr, indices, data, w, rows, 0, len(rows), row_group, grp_ptr, kind, dose, coef, d, grad)
    return f, grad


@numba.njit(cache=True)
def csr_rmatvec_serial(indptr, indices, data, g, rows, start, acc):
    """``acc += A^T g`` over the CSR rows ``start + rows[t]`` with weights ``g[rows[t]]`` (a structure's
    rows from ``start``; rows with g = 0 may be left out)."""
    for t in range(len(rows)):
        r = start + rows[t]
        gr = g[rows[t]]
        for p in range(indptr[r], indptr[r + 1]):
            acc[indices[p]] += data[p] * gr
