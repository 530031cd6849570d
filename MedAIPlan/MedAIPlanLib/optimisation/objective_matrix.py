"""Plan objectives on one stacked dose-influence matrix (CPU, numba), skipping rows that cannot matter.

All structures that carry objectives are stacked into one float32 CSR matrix (rows = their exclusive
dose-grid voxels, see :func:`fluence.exclusive_voxels`). Rows whose only objectives are squared
overdoses contribute nothing while their dose stays below the objective's dose; since all entries
are non-negative, ``d(w) <= d(w_ref) + rowsum * max(w - w_ref, 0)``, so such a row is recomputed
only when that bound reaches its threshold (exact, no approximation; a second, finer bound uses row sums per group of
columns); the whole dose is recomputed (and ``w_ref`` moved) when the coarse bound leaves more than
a quarter of those rows, or the fine bound more than 5 %, as candidates. Separable objectives
(squared over/under dose, deviation) take their gradient in the same pass over a row as its dose
(:func:`objective_kernels.fused_objective`); the others, and structures with a factor, go through
:func:`objectives.objective_value_grad` on their doses and get ``A^T g`` over their rows with non-zero
``g`` afterwards. Values and gradients equal the definitions' on the same matrix.
"""

from __future__ import annotations

import contextlib
import ctypes

import numba
import numpy as np
import scipy.sparse as sp

from MedAIPlanLib.optimisation.objective_kernels import (
    DEVIATION,
    OVERDOSE,
    UNDERDOSE,
    count_stacked,
    csr_rmatvec_serial,
    fill_stacked,
    fused_objective,
    fused_objective_serial,
    row_group_sums,
)
from MedAIPlanLib.optimisation.objectives import objective_value_grad


class StackedObjectives:
    """Objectives of all structures on one CSR matrix ``scale`` x dij[rows] (see module docstring)."""

    def __init__(
        self,
        dij: sp.spmatrix,
        voxels: dict[str, np.ndarray],
        objectives: list,
        scale: float = 1.0,
        blocks: dict[str, sp.spmatrix] | None = None,
    ):
        """``blocks``: for structure s, doses ``W @ dij[rows]`` from a pair (W, rows) instead of
        ``dij[voxels[s]]`` (e.g. :func:`ct_grid.ct_factor`: CT-grid voxels interpolated)."""
        used = sorted({o.structure for o in objectives})
        missing = [s for s in used if not (blocks and s in blocks) and len(voxels.get(s, ())) == 0]
        if missing:
            raise ValueError(f"Objectives name structures without voxels: {', '.join(missing)}.")
        self.objectives = objectives
        blocks = blocks or {}
        self.factors = {s: blocks[s][0].tocsr().astype(np.float64) for s in used if s in blocks}
        source = [np.asarray(blocks[s][1] if s in blocks else voxels[s], np.int64) for s in used]
        bounds = np.concatenate([[0], np.cumsum([len(r) for r in source])])
        self.slices = {s: slice(int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(used)}
        self.n_rows, self.n_cols = int(bounds[-1]), dij.shape[1]
        self.indptr, self.indices, self.data = _stack_rows(dij, source, scale)
        self.row_nnz = np.diff(self.indptr)
        self._groups(used)
        self._bounds_for_skipping(used)
        self.all_rows = np.arange(self.n_rows, dtype=np.int64)
        self._d = np.zeros(self.n_rows)
        self.w_ref = None
        self.d_ref = None
        self.n_full = 0
        self.n_partial = 0
        self.n_threads = numba.get_num_threads()

    def _groups(self, used: list[str]) -> None:
        """One group per structure; the separable objectives of structures without a factor run fused."""
        self.row_group = np.zeros(self.n_rows, np.int32)
        kind, dose, coef, ptr = [], [], [], [0]
        self.two_pass = []
        for g, s in enumerate(used):
            sl = self.slices[s]
            self.row_group[sl] = g
            objs = [o for o in self.objectives if o.structure == s]
            if s in self.factors or any(o.type not in _KINDS for o in objs):
                self.two_pass.append(s)
            else:
                n = sl.stop - sl.start
                for o in objs:
                    kind.append(_KINDS[o.type])
                    dose.append(o.dose)
                    coef.append(o.penalty / n)
            ptr.append(len(kind))
        self.grp_ptr = np.asarray(ptr, np.int64)
        self.kind = np.asarray(kind, np.int64)
        self.dose_ref = np.asarray(dose, np.float64)
        self.coef = np.asarray(coef, np.float64)

    def _bounds_for_skipping(self, used: list[str]) -> None:
        n_groups = min(32, max(1, self.n_cols))
        self.group_starts = np.unique(np.linspace(0, self.n_cols, n_groups, endpoint=False).astype(np.int64))
        group_of = (np.searchsorted(self.group_starts, np.arange(self.n_cols), side="right") - 1).astype(np.int64)
        self.rowsum, self.group_rowsum = row_group_sums(
            self.indptr, self.indices, self.data, group_of, len(self.group_starts)
        )
        self.threshold = np.full(self.n_rows, np.inf)  # inf: row always computed
        for s in used:
            objs = [o for o in self.objectives if o.structure == s]
            if s not in self.factors and all(o.type == "squared_overdose" for o in objs):
                self.threshold[self.slices[s]] = min(o.dose for o in objs)
        self.skippable = np.isfinite(self.threshold)
        self.always = np.flatnonzero(~self.skippable).astype(np.int64)
        self.n_skippable = int(self.skippable.sum())

    def mean_row_sum(self, structure: str) -> float:
        """Mean dose of ``structure`` (its stacked rows, through its factor if any) for unit weights."""
        rs = self.rowsum[self.slices[structure]]
        factor = self.factors.get(structure)
        return float(np.mean(rs if factor is None else factor @ rs))

    def _rows(self, w: np.ndarray) -> np.ndarray | None:
        """Rows to compute at ``w``: all (None, a new reference) or the always-computed ones plus the
        skippable rows whose bound reaches their threshold (the others stay below it, zero objective)."""
        if self.d_ref is None:
            return None
        delta = max(float(np.max(w - self.w_ref)), 0.0)
        if delta > self.horizon:
            return None
        cand = self.near[self.near_ratio <= delta]
        # finer bound per column group: d <= d_ref + sum_g rowsum_g * max_{j in g} (w_j - w_ref_j)+
        dg = np.maximum(np.maximum.reduceat(w - self.w_ref, self.group_starts), 0.0)
        cand = cand[self.d_ref[cand] + self.group_rowsum[cand] @ dg >= self.threshold[cand]]
        if len(cand) > 0.05 * max(1, self.n_skippable):
            return None
        return np.sort(np.concatenate([self.always, cand]))

    def _set_reference(self, w: np.ndarray, d: np.ndarray) -> None:
        self.w_ref, self.d_ref = w.copy(), d.copy()
        # a skippable row can reach its threshold only once max(w - w_ref) >= slack / rowsum
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self.rowsum > 0, (self.threshold - d) / self.rowsum, np.inf)
        ratio = np.where(self.skippable, ratio, np.inf)
        # a quarter of the skippable rows as candidates is too many: beyond that step, recompute all
        k = int(0.25 * self.n_skippable)
        self.horizon = float(np.partition(ratio, k)[k]) if 0 < k < len(ratio) else -np.inf
        self.near = np.flatnonzero(ratio <= self.horizon)
        self.near_ratio = ratio[self.near]

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """Weighted sum of the objectives and its gradient with respect to the bixel weights."""
        w = np.ascontiguousarray(w, dtype=np.float64)
        rows = self._rows(w)
        full = rows is None
        rows = self.all_rows if full else rows
        nnz = int(self.indptr[-1]) if full else int(self.row_nnz[rows].sum())
        d = self._d
        args = (
            self.indptr,
            self.indices,
            self.data,
            w,
            rows,
            self.row_group,
            self.grp_ptr,
            self.kind,
            self.dose_ref,
            self.coef,
            d,
        )
        if self.n_threads > 1 and nnz > _PARALLEL_ENTRIES:
            total, grad = fused_objective(*args, self.n_threads)
        else:
            total, grad = fused_objective_serial(*args)
        if full:
            self._set_reference(w, d)
            self.n_full += 1
        else:
            self.n_partial += 1
        for s in self.two_pass:
            total += self._two_pass(s, d, grad)
        return total, grad

    def _two_pass(self, s: str, d: np.ndarray, grad: np.ndarray) -> float:
        """Objectives of structure ``s`` on its (already computed) doses; adds their gradient into ``grad``."""
        sl = self.slices[s]
        factor = self.factors.get(s)
        ds = d[sl] if factor is None else factor @ d[sl]
        total, gs = 0.0, np.zeros(len(ds))
        for o in self.objectives:
            if o.structure == s:
                f, g = objective_value_grad(o, ds)
                total += o.penalty * f
                gs += o.penalty * g
        g_rows = gs if factor is None else factor.T @ gs
        csr_rmatvec_serial(
            self.indptr, self.indices, self.data, g_rows, np.flatnonzero(g_rows).astype(np.int64), sl.start, grad
        )
        return total


_KINDS = {"squared_overdose": OVERDOSE, "squared_underdose": UNDERDOSE, "squared_deviation": DEVIATION}
_PARALLEL_ENTRIES = 3_000_000  # below this many matrix entries one thread is as fast (2-core box)


def _stack_rows(dij: sp.spmatrix, source: list[np.ndarray], scale: float):
    """CSR arrays (int64 indptr, uint16/int32 indices, float32 data) of ``scale`` x dij[rows] stacked."""
    csc = dij if dij.format == "csc" else dij.tocsc()
    src = np.concatenate(source) if source else np.zeros(0, np.int64)
    n_voxels = dij.shape[0]
    map_rows = np.argsort(src, kind="stable").astype(np.int64)
    map_ptr = np.zeros(n_voxels + 1, np.int64)
    map_ptr[1:] = np.cumsum(np.bincount(src, minlength=n_voxels))
    counts = count_stacked(csc.indptr, csc.indices, map_ptr, map_rows, len(src))
    indptr = np.zeros(len(src) + 1, np.int64)
    indptr[1:] = np.cumsum(counts)
    indices = np.empty(int(indptr[-1]), np.uint16 if dij.shape[1] <= 65536 else np.int32)  # fewer bytes per entry
    data = np.empty(int(indptr[-1]), np.float32)
    fill_stacked(
        csc.indptr,
        csc.indices,
        csc.data.astype(np.float32, copy=False),
        map_ptr,
        map_rows,
        indptr,
        np.float32(scale),
        indices,
        data,
    )
    return indptr, indices, data


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
    from MedAIPlanLib.optimisation.objectives import Objective

    dij = sp.csc_matrix(np.ones((3, 2), np.float32))
    objectives = [Objective("a", "squared_deviation", 1.0), Objective("b", "mean", 1.0)]
    for n_cols in (2, 70000):
        m = sp.csc_matrix(
            (dij.data, dij.indices, np.concatenate([dij.indptr, np.full(n_cols - 2, 6)])), shape=(3, n_cols)
        )
        problem = StackedObjectives(m, {"a": np.array([0, 1]), "b": np.array([2])}, objectives)
        w = np.ones(n_cols)
        problem.value_and_grad(w)
        fused_objective(
            problem.indptr,
            problem.indices,
            problem.data,
            w,
            problem.all_rows,
            problem.row_group,
            problem.grp_ptr,
            problem.kind,
            problem.dose_ref,
            problem.coef,
            problem._d,
            2,
        )
