"""Plan objectives on one stacked dose-influence matrix (CPU, numba), skipping rows that cannot matter.

All structures that carry objectives are stacked into one float32 CSR matrix (rows = their exclusive
dose-grid voxels, see :func:`fluence.exclusive_voxels`). Rows whose only objectives are squared
overdoses contribute nothing while their dose stays below the objective's dose; since all entries
are non-negative, ``d(w) <= d(w_ref) + rowsum * max(w - w_ref, 0)``, so such a row is recomputed
only when that bound reaches its threshold (exact, no approximation; a second, finer bound uses row sums per group of
columns); the whole dose is recomputed (and ``w_ref`` moved) when the coarse bound leaves more than
a quarter of those rows, or the fine bound more than 5 %, as candidates. The gradient
``A^T g`` runs over the rows with non-zero ``g`` only. Values and gradients equal the plain ones.
"""

from __future__ import annotations

import contextlib
import ctypes

import numba
import numpy as np
import scipy.sparse as sp

from .dose_kernels import csr_matvec, csr_matvec_serial, csr_rmatvec, csr_rmatvec_serial


def objective_value_grad(o, d: np.ndarray) -> tuple[float, np.ndarray]:
    """matRad objective ``o`` (see :mod:`fluence`) on doses ``d`` (Gy): (value, d value / d dose)."""
    n = d.size
    if o.type == "squared_overdose":
        r = np.maximum(d - o.dose, 0.0)
        return float(r @ r) / n, 2 * r / n
    if o.type == "squared_underdose":
        r = np.maximum(o.dose - d, 0.0)
        return float(r @ r) / n, -2 * r / n
    if o.type == "squared_deviation":
        r = d - o.dose
        return float(r @ r) / n, 2 * r / n
    if o.type == "mean":
        r = max(float(d.mean()) - o.dose, 0.0)
        return r * r, np.full(n, 2 * r / n)
    dv = float(np.quantile(d, 1 - o.volume / 100.0)) if n > 1 else float(d[0])
    sel = ((d > o.dose) & (d < dv)) if o.type == "max_dvh" else ((d < o.dose) & (d > dv))
    r = np.where(sel, d - o.dose, 0.0)
    return float(r @ r) / n, 2 * r / n


class StackedObjectives:
    """Objectives of all structures on one CSR matrix ``scale`` x dij[rows] (see module docstring)."""

    def __init__(self, dij: sp.spmatrix, voxels: dict[str, np.ndarray], objectives: list, scale: float = 1.0,
                 blocks: dict[str, sp.spmatrix] | None = None):
        """``blocks``: for structure s, doses ``W @ dij[rows]`` from a pair (W, rows) instead of
        ``dij[voxels[s]]`` (e.g. :func:`ct_grid.ct_factor`: CT-grid voxels interpolated)."""
        used = sorted({o.structure for o in objectives})
        missing = [s for s in used if not (blocks and s in blocks) and len(voxels.get(s, ())) == 0]
        if missing:
            raise ValueError(f"Objectives name structures without voxels: {', '.join(missing)}.")
        self.objectives = objectives
        self.slices = {}
        parts, start = [], 0
        csr = dij.tocsr()
        self.factors = {}
        for s in used:
            if blocks and s in blocks:
                self.factors[s] = blocks[s][0].tocsr().astype(np.float64)
                parts.append(csr[np.asarray(blocks[s][1], np.int64)])
            else:
                parts.append(csr[np.asarray(voxels[s], np.int64)])
            self.slices[s] = slice(start, start + parts[-1].shape[0])
            start += parts[-1].shape[0]
        a = sp.vstack(parts, format="csr")
        if a.dtype != np.float32:
            a = a.astype(np.float32)
        if scale != 1.0:
            a.data *= np.float32(scale)   # in place: no copy of the whole matrix
        a.sort_indices()
        self.matrix = a
        self.indptr = a.indptr.astype(np.int64)
        self.indices = a.indices.astype(np.uint16 if a.shape[1] <= 65536 else np.int32)   # fewer bytes per entry
        self.data = a.data
        self.n_rows, self.n_cols = a.shape
        self.rowsum = np.asarray(a.sum(axis=1), float).ravel()
        n_groups = min(32, max(1, self.n_cols))
        self.group_starts = np.unique(np.linspace(0, self.n_cols, n_groups, endpoint=False).astype(np.int64))
        group_of = np.searchsorted(self.group_starts, np.arange(self.n_cols), side="right") - 1
        member = sp.csr_matrix((np.ones(self.n_cols, np.float32), (np.arange(self.n_cols), group_of)),
                               shape=(self.n_cols, len(self.group_starts)))
        self.group_rowsum = np.asarray((a @ member).todense(), dtype=np.float64)
        self.threshold = np.full(self.n_rows, np.inf)      # inf: row always computed
        for s in used:
            objs = [o for o in objectives if o.structure == s]
            if s not in self.factors and all(o.type == "squared_overdose" for o in objs):
                self.threshold[self.slices[s]] = min(o.dose for o in objs)
        self.skippable = np.isfinite(self.threshold)
        self.always = np.flatnonzero(~self.skippable).astype(np.int64)
        self.n_skippable = int(self.skippable.sum())
        self.w_ref = None
        self.d_ref = None
        self.n_full = 0
        self.n_partial = 0
        self.n_threads = numba.get_num_threads()

    def _reference(self, w: np.ndarray) -> np.ndarray:
        d = np.zeros(self.n_rows)
        _matvec(self.indptr, self.indices, self.data, w, np.arange(self.n_rows, dtype=np.int64), d, self.n_threads)
        self.w_ref, self.d_ref = w.copy(), d
        # a skippable row can reach its threshold only once max(w - w_ref) >= slack / rowsum
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self.rowsum > 0, (self.threshold - d) / self.rowsum, np.inf)
        self.ratio = np.where(self.skippable, ratio, np.inf)
        self.n_full += 1
        return d

    def dose(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stacked doses (Gy) at ``w`` and the skippable rows recomputed (None: all rows were).

        Skippable rows not recomputed keep their reference dose, which like their true dose lies
        below their overdose threshold (both give zero objective)."""
        w = np.ascontiguousarray(w, dtype=np.float64)
        if self.d_ref is not None:
            delta = max(float(np.max(w - self.w_ref)), 0.0)
            cand = np.flatnonzero(self.ratio <= delta)
            n_cand = len(cand)
            if n_cand <= 0.25 * max(1, self.n_skippable):
                # finer bound per column group: d <= d_ref + sum_g rowsum_g * max_{j in g} (w_j - w_ref_j)+
                dg = np.maximum(np.maximum.reduceat(w - self.w_ref, self.group_starts), 0.0)
                cand = np.sort(cand[self.d_ref[cand] + self.group_rowsum[cand] @ dg >= self.threshold[cand]])
            if n_cand <= 0.25 * max(1, self.n_skippable) and len(cand) <= 0.05 * max(1, self.n_skippable):
                d = self.d_ref.copy()
                _matvec(self.indptr, self.indices, self.data, w, np.concatenate([self.always, cand]), d,
                        self.n_threads)
                self.n_partial += 1
                return d, cand
        return self._reference(w), None

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Weighted sum of the objectives and its gradient with respect to the bixel weights."""
        d, cand = self.dose(w)
        gd = np.zeros(self.n_rows)
        total = 0.0
        for o in self.objectives:
            sl = self.slices[o.structure]
            if cand is not None and self.skippable[sl.start]:
                # only the recomputed rows can be above the threshold: evaluate there, normalise by the structure
                idx = cand[(cand >= sl.start) & (cand < sl.stop)]
                r = np.maximum(d[idx] - o.dose, 0.0)
                n = sl.stop - sl.start
                total += o.penalty * float(r @ r) / n
                gd[idx] += o.penalty * 2 * r / n
                continue
            factor = self.factors.get(o.structure)
            f, g = objective_value_grad(o, d[sl] if factor is None else factor @ d[sl])
            total += o.penalty * f
            gd[sl] += o.penalty * (g if factor is None else factor.T @ g)
        nz = np.flatnonzero(gd).astype(np.int64)
        if len(nz) * 64 < 2_000_000 or self.n_threads == 1:   # small: threads cost more than they save
            grad = np.zeros(self.n_cols)
            csr_rmatvec_serial(self.indptr, self.indices, self.data, gd, nz, grad)
        else:
            grad = csr_rmatvec(self.indptr, self.indices, self.data, gd, nz, self.n_cols, self.n_threads)
        return total, grad


def _matvec(indptr, indices, data, w, rows, out, n_threads):
    if n_threads > 1 and len(rows) > 20_000:
        csr_matvec(indptr, indices, data, w, rows, out)
    else:
        csr_matvec_serial(indptr, indices, data, w, rows, out)


@contextlib.contextmanager
def single_threaded_blas():
    """Run the block with the loaded OpenBLAS libraries on one thread (restored afterwards).

    scipy's L-BFGS-B calls BLAS on vectors of a few thousand bixels, where OpenBLAS's thread start-up
    costs ten times the work. Linux only (reads /proc/self/maps); elsewhere a no-op."""
    libs = []
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas", "scipy_openblas64_", "openblas64_"):
            get = getattr(lib, f"{prefix}_get_num_threads", None)
            put = getattr(lib, f"{prefix}_set_num_threads", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                libs.append((put, int(get())))
                put(ctypes.c_int(1))
                break
    try:
        yield
    finally:
        for put, n in libs:
            put(ctypes.c_int(n))


def load_kernels() -> None:
    """Load (or compile once) the optimiser's numba kernels for the index types used, e.g. before timing."""
    indptr = np.array([0, 1], np.int64)
    data = np.ones(1, np.float32)
    rows = np.zeros(1, np.int64)
    x = np.ones(1)
    for indices in (np.zeros(1, np.uint16), np.zeros(1, np.int32)):
        out = np.zeros(1)
        csr_matvec(indptr, indices, data, x, rows, out)
        csr_matvec_serial(indptr, indices, data, x, rows, out)
        csr_rmatvec(indptr, indices, data, x, rows, 1, max(1, numba.get_num_threads()))
        csr_rmatvec_serial(indptr, indices, data, x, rows, np.zeros(1))
