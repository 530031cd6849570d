"""The CPU optimiser's fused numba kernel gives the values and gradients of the objective definitions.

The three voxel-wise squared objectives are evaluated twice in the product: once in
:mod:`objectives` (over numpy or torch: the reference, also the GPU path) and once inside the fused
numba pass of :mod:`objective_kernels` (dose, objective and gradient per matrix row), kept because
``bench/bench_objectives.py`` shows it faster. Here both must agree to rounding (float64, rtol 1e-6),
serial and threaded, with doses on both sides of every objective's dose level.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import MedAIPlanLib.optimisation.objective_matrix as objective_matrix
from MedAIPlanLib.optimisation.objective_matrix import StackedObjectives
from MedAIPlanLib.optimisation.objectives import Objective, objective_value_grad

FUSED = ("squared_overdose", "squared_underdose", "squared_deviation")
SCALE = 2.0  # fractions: exact in float32, so the stacked entries equal 2 x the matrix's


def _case(types: tuple[str, ...], seed: int = 4):
    rng = np.random.default_rng(seed)
    dense = (rng.random((300, 40)) * (rng.random((300, 40)) < 0.3)).astype(np.float32)
    voxels = {"target": np.arange(0, 90), "organ": np.arange(90, 170), "body": np.arange(170, 300)}
    levels = {"target": 1.0, "organ": 0.6, "body": 0.8}
    objectives = [Objective(s, t, levels[s] + 0.05 * i, 10.0 + i) for s in voxels for i, t in enumerate(types)]
    w = rng.uniform(0.0, 0.15, 40)
    return dense, voxels, objectives, w


def _reference(dense, voxels, objectives, w):
    """Doses, value and gradient from the definitions on numpy (dense float64 products)."""
    a64 = SCALE * dense.astype(np.float64)
    total, grad, doses = 0.0, np.zeros(dense.shape[1]), {}
    for o in objectives:
        a = a64[voxels[o.structure]]
        doses[o.structure] = a @ w
        f, g = objective_value_grad(o, doses[o.structure])
        total += o.penalty * f
        grad += o.penalty * (a.T @ g)
    return doses, total, grad


@pytest.mark.parametrize("types", [(t,) for t in FUSED] + [FUSED], ids=list(FUSED) + ["all_three"])
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
def test_fused_kernel_equals_the_objective_definitions(types, threaded, monkeypatch):
    dense, voxels, objectives, w = _case(types)
    problem = StackedObjectives(sp.csc_matrix(dense), voxels, objectives, scale=SCALE)
    assert problem.two_pass == []  # every structure's objectives run inside the fused kernel
    if threaded:
        monkeypatch.setattr(objective_matrix, "_PARALLEL_ENTRIES", 0)
        problem.n_threads = 2
    doses, ref_value, ref_grad = _reference(dense, voxels, objectives, w)
    for o in objectives:  # the clamps of over- and underdose both matter
        assert (doses[o.structure] > o.dose).any()
        assert (doses[o.structure] < o.dose).any()
    value, grad = problem.value_and_grad(w)
    assert value > 0
    assert value == pytest.approx(ref_value, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-12 * np.abs(ref_grad).max())
    for s, sl in problem.slices.items():  # and the doses it leaves for the second pass
        np.testing.assert_allclose(problem._d[sl], doses[s], rtol=1e-6)
