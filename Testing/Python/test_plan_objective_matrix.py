"""The optimiser's stacked objective matrix gives the plain objective values and gradients.

A random non-negative dose-influence matrix (CSC, as the dose engine makes it) with structures of
every objective type, one structure through a CT-grid-style factor whose rows overlap another
structure's, evaluated along a path of weights on which rows are skipped and re-referenced: every
value and gradient must equal the dense float64 computation of matRad's definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from MedAIPlanLib.optimisation.fluence import Objective, optimise_fluence
from MedAIPlanLib.optimisation.objective_matrix import StackedObjectives, objective_value_grad


def _problem(seed: int, n_cols: int):
    rng = np.random.default_rng(seed)
    n_vox = 400
    dense = rng.random((n_vox, n_cols)) * (rng.random((n_vox, n_cols)) < 0.3)
    dij = sp.csc_matrix(dense.astype(np.float32))
    voxels = {
        "target": np.arange(0, 60),
        "organ": np.arange(60, 120),
        "body": np.arange(120, 400),
        "dvh": np.arange(200, 260),
    }
    # factor structure: 30 "CT voxels", each a convex mix of two dose-grid rows that body also holds
    rows_f = np.arange(300, 340)
    w_f = sp.random(30, len(rows_f), density=0.08, random_state=seed, format="csr") + sp.eye(30, len(rows_f))
    w_f = sp.csr_matrix(w_f.multiply(1.0 / np.asarray(w_f.sum(axis=1))))
    blocks = {"fine": (w_f, rows_f)}
    objectives = [
        Objective("target", "squared_deviation", 2.0, 100.0),
        Objective("target", "squared_underdose", 1.9, 50.0),
        Objective("organ", "squared_overdose", 0.8, 30.0),
        Objective("organ", "mean", 0.5, 10.0),
        Objective("body", "squared_overdose", 1.2, 5.0),
        Objective("dvh", "max_dvh", 0.9, 3.0, volume=30.0),
        Objective("fine", "squared_overdose", 1.0, 20.0),
        Objective("fine", "min_dvh", 0.6, 2.0, 80.0),
    ]
    return dense, dij, voxels, blocks, objectives


def _plain(dense, voxels, blocks, objectives, scale, w):
    total, grad = 0.0, np.zeros(dense.shape[1])
    for o in objectives:
        if o.structure in blocks:
            f_mat, rows = blocks[o.structure]
            a = f_mat.toarray() @ (scale * dense[rows])
        else:
            a = scale * dense[voxels[o.structure]]
        f, g = objective_value_grad(o, a @ w)
        total += o.penalty * f
        grad += o.penalty * (a.T @ g)
    return total, grad


@pytest.mark.parametrize(
    "n_cols", [50, pytest.param(70000, marks=pytest.mark.slow)]
)  # 16-bit and 32-bit column indices
def test_values_and_gradients_equal_the_plain_computation(n_cols):
    dense, dij, voxels, blocks, objectives = _problem(3, min(n_cols, 50))
    if n_cols > 50:  # the same entries, then many empty columns (wider than 16 bits)
        dij = sp.hstack([dij, sp.csc_matrix((dij.shape[0], n_cols - 50), dtype=np.float32)], format="csc")
        dense = np.hstack([dense, np.zeros((dense.shape[0], n_cols - 50))])
    problem = StackedObjectives(dij, voxels, objectives, scale=2.0, blocks=blocks)
    assert problem.indices.dtype == (np.uint16 if n_cols <= 65536 else np.int32)
    rng = np.random.default_rng(0)
    w = np.zeros(dense.shape[1])
    w[:50] = rng.uniform(0.5, 1.0, 50)  # the empty columns stay at 0
    w *= 1.2 / np.quantile(2.0 * dense[voxels["body"]] @ w, 0.97)  # 3 % of body rows above its 1.2 Gy
    for step in range(40):  # small moves (skipping), a few large ones (re-reference)
        w = np.maximum(w + rng.normal(0, 0.01 if step % 10 == 9 else 0.0002, w.shape) * (w > 0), 0.0)
        value, grad = problem.value_and_grad(w)
        ref_value, ref_grad = _plain(dense.astype(np.float32).astype(np.float64), voxels, blocks, objectives, 2.0, w)
        assert value == pytest.approx(ref_value, rel=1e-5, abs=1e-9)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
    assert problem.n_partial > 0  # rows were skipped
    assert problem.n_full > 1  # and re-referenced


def test_fused_and_threaded_paths_agree():
    dense, dij, voxels, blocks, objectives = _problem(5, 40)
    serial = StackedObjectives(dij, voxels, objectives, blocks=blocks)
    threaded = StackedObjectives(dij, voxels, objectives, blocks=blocks)
    serial.n_threads = 1
    import MedAIPlanLib.optimisation.objective_matrix as om

    old, om._PARALLEL_ENTRIES = om._PARALLEL_ENTRIES, 0  # force the threaded kernel on this small case
    try:
        w = np.random.default_rng(1).random(40) * 0.05
        v1, g1 = serial.value_and_grad(w)
        v2, g2 = threaded.value_and_grad(w)
    finally:
        om._PARALLEL_ENTRIES = old
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_start_dose_matches_prescription_on_target_rows():
    dense, dij, voxels, _, objectives = _problem(7, 30)
    objectives = [o for o in objectives if o.structure != "fine"]
    start = optimise_fluence(dij, voxels, objectives, 2.0, "target", fractions=3, max_iter=0, method="pgd")
    # the uniform start gives the target a mean plan dose equal to the prescription
    mean = 3 * float((dense[voxels["target"]].astype(np.float32) @ start.weights).mean())
    assert mean == pytest.approx(2.0, rel=1e-5)


def _devices():
    import torch

    return [
        "cpu",
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
        ),
    ]


@pytest.mark.parametrize("device", _devices())
def test_torch_objective_matches_the_stacked_matrix(device):
    """The GPU path's objective (torch sparse products) equals the CPU path's, run here on ``device``."""
    import torch

    from MedAIPlanLib.optimisation.fluence import _Problem

    dense, dij, voxels, _, objectives = _problem(11, 60)
    objectives = [o for o in objectives if o.structure != "fine"]  # the torch path has no factors
    stacked = StackedObjectives(dij, voxels, objectives, scale=2.0)
    problem = _Problem(dij, voxels, objectives, 2.0, device)
    w = np.random.default_rng(2).uniform(0.0, 0.1, 60)
    value, grad = problem.value_and_grad(torch.as_tensor(w, dtype=torch.float64, device=device))
    ref_value, ref_grad = stacked.value_and_grad(w)
    assert value == pytest.approx(ref_value, rel=1e-5)
    np.testing.assert_allclose(grad.cpu().numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
