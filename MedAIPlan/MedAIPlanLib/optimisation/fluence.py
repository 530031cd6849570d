"""Fluence (bixel weight) optimisation with non-negative weights against per-structure objectives.

Objectives follow matRad's definitions (doses in Gy of the whole plan, normalised per voxel and
multiplied by a penalty weight), each written once in :mod:`objectives` over numpy or torch.

Voxels shared by several structures count only for the one with the best (lowest) priority, as
matRad's overlap priorities. On the CPU the objectives are evaluated on one stacked float32 matrix
with numba (:mod:`objective_matrix`), on a GPU on the doses of torch sparse products; the weights are
optimised by L-BFGS-B with bounds w >= 0 (scipy) or by projected gradient descent (Adam with clamping).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from MedAIPlanLib.optimisation.objective_matrix import StackedObjectives, single_threaded_blas
from MedAIPlanLib.optimisation.objectives import OBJECTIVE_TYPES, Objective, objective_value_grad

__all__ = ["OBJECTIVE_TYPES", "FluenceResult", "Objective", "exclusive_voxels", "optimise_fluence"]


@dataclass
class FluenceResult:
    """Optimised weights (per-fraction scale, see :func:`optimise_fluence`), objective history, time."""

    weights: np.ndarray
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 0


def exclusive_voxels(masks: dict[str, np.ndarray], priorities: dict[str, int]) -> dict[str, np.ndarray]:
    """Flat voxel indices per structure after removing voxels claimed by a better-priority structure."""
    taken = None
    out = {}
    for name in sorted(masks, key=lambda n: priorities.get(n, 2)):
        m = np.asarray(masks[name], bool).ravel()
        own = m if taken is None else m & ~taken
        out[name] = np.flatnonzero(own)
        taken = m.copy() if taken is None else taken | m
    return out


def _torch_csr(matrix: sp.spmatrix, device) -> torch.Tensor:
    m = matrix.tocsr().astype(np.float32)
    m.sort_indices()  # scipy's CSR meets torch's invariants: no need to check them again
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.as_tensor(m.indptr, dtype=torch.int64),
            torch.as_tensor(m.indices, dtype=torch.int64),
            torch.as_tensor(m.data),
            size=m.shape,
            device=device,
            check_invariants=False,
        )


class _Problem:
    def __init__(
        self, dij: sp.spmatrix, voxels: dict[str, np.ndarray], objectives: list[Objective], scale: float, device
    ):
        self.device = torch.device(device)
        self.terms = []
        used = sorted({o.structure for o in objectives})
        missing = [s for s in used if s not in voxels or len(voxels[s]) == 0]
        if missing:
            raise ValueError(f"Objectives name structures without voxels: {', '.join(missing)}.")
        csr = dij.tocsr()
        self.blocks = {}
        for s in used:
            sub = (csr[voxels[s]] * scale).astype(np.float32).tocsr()
            self.blocks[s] = (_torch_csr(sub, self.device), _torch_csr(sub.T, self.device))
        self.objectives = objectives

    def _mv(self, matrix, x: torch.Tensor) -> torch.Tensor:
        return (matrix @ x[:, None].float()).double().ravel()

    def value_and_grad(self, w: torch.Tensor) -> tuple[float, torch.Tensor]:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros_like(w)
        doses = {s: self._mv(a, w) for s, (a, _) in self.blocks.items()}
        gd = {s: torch.zeros_like(d) for s, d in doses.items()}
        for o in self.objectives:
            f, g = objective_value_grad(o, doses[o.structure])
            total = total + o.penalty * f
            gd[o.structure] = gd[o.structure] + o.penalty * g
        for s, (_, at) in self.blocks.items():
            grad = grad + self._mv(at, gd[s])
        return float(total), grad


def _target_mean_dose(problem, dij, voxels, target, fractions, blocks) -> float:
    """The target's mean plan dose for unit weights (the stacked matrix's row sums when it holds the target)."""
    if isinstance(problem, StackedObjectives) and target in problem.slices:
        mean_t = problem.mean_row_sum(target)
    elif blocks and target in blocks:
        f, rows_t = blocks[target]
        mean_t = float(np.mean(f @ np.asarray(dij.tocsr()[rows_t].sum(axis=1)).ravel())) * fractions
    else:
        mean_t = float(np.asarray(dij.tocsr()[voxels[target]].sum(axis=1)).mean()) * fractions
    if mean_t <= 0:
        raise ValueError("The beams deliver no dose to the target; check the beam geometry.")
    return mean_t


def optimise_fluence(
    dij: sp.spmatrix,
    voxels: dict[str, np.ndarray],
    objectives: list[Objective],
    prescription_gy: float,
    target: str,
    fractions: int = 1,
    max_iter: int = 300,
    w0: np.ndarray | None = None,
    device="cpu",
    method: str = "auto",
    tol: float | None = None,
    blocks: dict | None = None,
    stall_iterations: int | None = None,
    stall_tol: float = 5e-3,
    progress=None,
) -> FluenceResult:
    """Optimise non-negative bixel weights; plan dose = ``fractions`` x (dij @ w).

    ``voxels``: flat dose-grid indices per structure (see :func:`exclusive_voxels`). The start is a
    uniform fluence scaled so that the target's mean dose equals the prescription (as matRad).
    ``method``: "lbfgsb" (scipy L-BFGS-B with bounds), "pgd" (projected Adam), "auto" (= "lbfgsb";
    on a GPU the objective and its gradient are evaluated there, L-BFGS-B's steps run on the CPU).
    ``tol``: L-BFGS-B's ftol and gtol (default 1e-10 / 1e-8: run to ``max_iter``).
    ``stall_iterations``: also stop L-BFGS-B once the objective fell by less than ``stall_tol``
    (relative) over that many iterations (a plateau: the plan no longer changes visibly).
    ``blocks``: per structure, a pair (W, rows) whose doses ``W @ dij[rows]`` replace ``dij[voxels[s]]``
    (:func:`ct_grid.ct_factor`: CT-grid voxels); then the optimisation runs on the CPU path.
    """
    _check_plan_inputs(voxels, objectives, prescription_gy, target, fractions, blocks)
    t0 = time.perf_counter()
    problem, value_and_grad = _objective_function(dij, voxels, objectives, fractions, blocks, torch.device(device))
    if w0 is None:
        w0 = np.full(dij.shape[1], prescription_gy / _target_mean_dose(problem, dij, voxels, target, fractions, blocks))
    history: list[float] = []
    if method == "auto":  # L-BFGS-B on every device: a GPU evaluates the objective, scipy steps (2 k numbers)
        method = "lbfgsb"
    if method == "lbfgsb":
        w, iters = _run_lbfgsb(
            value_and_grad, w0, dij.shape[1], history, max_iter, tol, stall_iterations, stall_tol, progress
        )
    else:
        w, iters = _run_projected_adam(value_and_grad, w0, history, max_iter, progress)
    return FluenceResult(np.asarray(w, float), history, time.perf_counter() - t0, iters)


def _check_plan_inputs(voxels, objectives, prescription_gy, target, fractions, blocks) -> None:
    """Refuses a prescription, fraction count, target or objective list that cannot make a plan."""
    if prescription_gy is None or prescription_gy <= 0:
        raise ValueError(f"The prescription must be a positive dose in Gy, got {prescription_gy}.")
    if fractions < 1:
        raise ValueError("The number of fractions must be at least 1.")
    if (target not in voxels or len(voxels[target]) == 0) and not (blocks and target in blocks):
        raise ValueError(f"The target {target!r} has no voxels on the dose grid.")
    if not objectives:
        raise ValueError("Give at least one objective.")


def _objective_function(dij, voxels, objectives, fractions, blocks, dev: torch.device):
    """(problem, value_and_grad(numpy weights) -> (float, numpy gradient)): the stacked numba
    objectives on the CPU (or with ``blocks``), torch sparse products on a GPU."""
    if dev.type == "cpu" or blocks:
        problem = StackedObjectives(dij, voxels, objectives, float(fractions), blocks)
        return problem, problem.value_and_grad
    problem = _Problem(dij, voxels, objectives, float(fractions), dev)

    def value_and_grad(x):
        f, g = problem.value_and_grad(torch.as_tensor(x, dtype=torch.float64, device=dev))
        return f, g.cpu().numpy()

    return problem, value_and_grad


def _run_lbfgsb(
    value_and_grad, w0, n: int, history: list[float], max_iter: int, tol, stall_iterations, stall_tol, progress
) -> tuple[np.ndarray, int]:
    """scipy's L-BFGS-B with bounds w >= 0 on the ``n`` bixels, stopped early on a plateau; (weights, iterations)."""
    from scipy.optimize import minimize

    def fun(x):
        f, g = value_and_grad(x)
        history.append(f)
        if progress is not None:
            progress.update("optimisation", min(1.0, len(history) / max_iter))
        return f, g

    per_iteration: list[float] = []

    def stalled(intermediate_result):
        per_iteration.append(float(intermediate_result.fun))
        if stall_iterations and len(per_iteration) > stall_iterations:
            old = per_iteration[-1 - stall_iterations]
            if old - per_iteration[-1] <= stall_tol * abs(old):
                raise StopIteration

    with single_threaded_blas():
        res = minimize(
            fun,
            np.asarray(w0, float),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0, None)] * n,
            callback=stalled,
            options={"maxiter": max_iter, "maxfun": max_iter * 2, "ftol": tol or 1e-10, "gtol": tol or 1e-8},
        )
    return res.x, int(res.nit)


def _run_projected_adam(value_and_grad, w0, history: list[float], max_iter: int, progress) -> tuple[np.ndarray, int]:
    """Projected gradient descent (Adam steps, clamped at 0) for ``max_iter`` iterations; (weights, iterations)."""
    w = np.asarray(w0, float).copy()
    lr = float(np.mean(w0)) * 0.05
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for it in range(1, max_iter + 1):
        f, g = value_and_grad(w)
        history.append(f)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = lr * (m / (1 - 0.9**it)) / (np.sqrt(v / (1 - 0.999**it)) + 1e-12)
        w = np.maximum(w - step, 0.0)
        if progress is not None:
            progress.update("optimisation", it / max_iter)
    return w, max_iter
