"""Plan objectives on the CPU: the optimiser's fused numba kernel against the array-namespace reference.

Both sides evaluate the same objectives (value and gradient with respect to the bixel weights) on the same
stacked dose-influence matrix (the float32 entries of :class:`StackedObjectives`) at the same weights:

* ``fused_full``: :meth:`StackedObjectives.value_and_grad` with every row computed (its fused numba pass:
  dose, separable objectives and gradient per row in one go; structures with other objectives in a second pass);
* ``fused_path``: the same along the optimiser's path, as it runs in a plan (rows that cannot reach their
  overdose threshold skipped, exactly);
* ``reference_numpy``: doses ``A @ w`` and gradient ``A^T g`` as scipy CSR products (the same entries in float64),
  each objective through :func:`objectives.objective_value_grad` on numpy arrays;
* ``reference_torch``: the GPU path's code (:class:`fluence._Problem`: torch sparse CSR products in float32, the
  same objective definitions on torch tensors) run on the CPU.

The weights are the iterates of a short L-BFGS-B run from matRad's uniform start (recorded once), so skipping
behaves as in a plan. Repeats are interleaved (every side once per round over all weights); wall and process CPU
time per evaluation, best and median; accuracy as the largest relative difference from ``reference_numpy``.

Cases: ``synthetic``: about 200k dose-grid voxels (58 x 58 x 60 at 5 mm), 5 beams of 21 x 21 pencils, 5
objectives (target squared deviation, organ squared overdose and mean, ring and body squared overdose);
``tg119``: the TG119 phantom's 7-beam matrix and cst objectives (as ``bench_plan_tg119.py``), when
``rt/pyRadPlan/TG119.mat`` and matRad's photon base data are in ``../shared/data``.

    python bench/bench_objectives.py [--repeats 5] [--iterations 30] [--threads N] [--case synthetic|tg119]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
for sub in ("MedAICommon", "MedAIPlan"):
    sys.path.insert(0, str(REPO / sub))

from MedAIPlanLib.optimisation.objective_matrix import StackedObjectives, load_kernels  # noqa: E402
from MedAIPlanLib.optimisation.objectives import Objective, objective_value_grad  # noqa: E402


def synthetic_case(seed: int = 0):
    """(dij CSC, voxels, objectives, prescription, target): a water box, a spherical target, an organ, a ring."""
    shape, h = (60, 58, 58), 5.0
    k, j, i = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * h for n in shape], indexing="ij")
    x, y, z = i.ravel(), j.ravel(), k.ravel()
    r_target = np.sqrt(x**2 + y**2 + z**2)
    rows, cols, vals = [], [], []
    rng = np.random.default_rng(seed)
    for b, angle in enumerate(np.deg2rad([0.0, 72.0, 144.0, 216.0, 288.0])):
        u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        lateral, depth = x * v[0] + y * v[1], x * u[0] + y * u[1] + 145.0
        for da in range(-3, 4):
            for dz in range(-3, 4):
                ia, iz = np.round(lateral / h).astype(int) + da, np.round(z / h).astype(int) + dz
                dist = np.hypot(lateral - ia * h, z - iz * h)
                keep = (np.abs(ia) <= 10) & (np.abs(iz) <= 10) & (dist < 15.0)
                rows.append(np.flatnonzero(keep))
                cols.append(b * 441 + (ia[keep] + 10) * 21 + iz[keep] + 10)
                vals.append(
                    np.exp(-(dist[keep] ** 2) / 72.0 - 0.005 * depth[keep]) * rng.uniform(0.95, 1.05, keep.sum())
                )
    dij = sp.csc_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(x.size, 5 * 441)
    )
    r_organ = np.sqrt(x**2 + (y - 45.0) ** 2 + z**2)
    target, organ = r_target <= 40.0, r_organ <= 25.0
    ring = (r_target > 40.0) & (r_target <= 60.0) & ~organ
    voxels = {
        "target": np.flatnonzero(target),
        "organ": np.flatnonzero(organ & ~target),
        "ring": np.flatnonzero(ring),
        "body": np.flatnonzero(~(target | organ | ring)),
    }
    objectives = [
        Objective("target", "squared_deviation", 60.0, 1000.0),
        Objective("organ", "squared_overdose", 25.0, 300.0),
        Objective("organ", "mean", 20.0, 50.0),
        Objective("ring", "squared_overdose", 45.0, 100.0),
        Objective("body", "squared_overdose", 30.0, 100.0),
    ]
    return dij, voxels, objectives, 60.0, "target"


def tg119_case(data: Path):
    """The TG119 phantom's 7-beam, 5 mm matrix (as ``bench_plan_tg119.py``), its structures and cst objectives."""
    from MedAIPlanLib.dose.beams import make_beams
    from MedAIPlanLib.dose.dose_influence import compute_dij, resample_nearest
    from MedAIPlanLib.dose.matrad_io import load_matrad_patient, load_photon_machine
    from MedAIPlanLib.optimisation.fluence import exclusive_voxels

    p = load_matrad_patient(data / "rt" / "pyRadPlan" / "TG119.mat")
    machine = load_photon_machine(data / "rt" / "matRad" / "photons_Generic.mat")
    beams = make_beams(
        p.structure("OuterTarget").mask, p.geometry, [0.0, 51.0, 102.0, 153.0, 204.0, 255.0, 306.0], bixel_width=5.0
    )
    dij = compute_dij(
        p.density,
        p.geometry,
        beams,
        machine,
        voxel_mask=p.structure("BODY").mask,
        dose_resolution_mm=5.0,
        dij_sampling=True,
    )
    masks = {s.name: resample_nearest(s.mask.astype(np.float32), p.geometry, dij.geometry) > 0.5 for s in p.structures}
    voxels = exclusive_voxels(masks, {s.name: s.priority for s in p.structures})
    objectives = [Objective(s.name, o["type"], o["dose"], o["penalty"]) for s in p.structures for o in s.objectives]
    return dij.matrix.tocsc(), voxels, objectives, 50.0, "OuterTarget"


class NumpyReference:
    """Objectives on numpy doses of scipy CSR products (the stacked matrix's entries in float64)."""

    def __init__(self, problem: StackedObjectives):
        a = sp.csr_matrix(
            (problem.data.astype(np.float64), problem.indices.astype(np.int32), problem.indptr),
            shape=(problem.n_rows, problem.n_cols),
        )
        self.a, self.at = a, a.T.tocsr()
        self.objectives, self.slices = problem.objectives, problem.slices

    def value_and_grad(self, w):
        """(value, gradient) at the bixel weights ``w``."""
        d = self.a @ w
        total, g = 0.0, np.zeros_like(d)
        for o in self.objectives:
            sl = self.slices[o.structure]
            f, gs = objective_value_grad(o, d[sl])
            total += o.penalty * f
            g[sl] += o.penalty * gs
        return float(total), self.at @ g


def weight_path(problem, w0: np.ndarray, iterations: int) -> list[np.ndarray]:
    """The weights at which L-BFGS-B (bounds w >= 0) evaluates the objectives, from ``w0``."""
    from scipy.optimize import minimize

    path: list[np.ndarray] = []

    def fun(w):
        path.append(w.copy())
        return problem.value_and_grad(w)

    minimize(
        fun,
        w0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * len(w0),
        options={"maxiter": iterations, "maxfun": 2 * iterations},
    )
    return path


def sides(dij, voxels, objectives, problem: StackedObjectives):
    """name -> function(list of weights) -> list of (value, gradient)."""
    import torch

    from MedAIPlanLib.optimisation.fluence import _Problem

    numpy_ref = NumpyReference(problem)
    torch_ref = _Problem(dij, voxels, objectives, 1.0, "cpu")

    def fused_full(ws):
        out = []
        for w in ws:
            problem.d_ref = None  # every row computed
            out.append(problem.value_and_grad(w))
        return out

    def fused_path(ws):
        problem.d_ref = None  # a fresh start: the first call sets the reference, later ones skip rows
        return [problem.value_and_grad(w) for w in ws]

    def reference_torch(ws):
        out = []
        for w in ws:
            f, g = torch_ref.value_and_grad(torch.as_tensor(w, dtype=torch.float64))
            out.append((f, g.numpy()))
        return out

    return {
        "fused_full": fused_full,
        "fused_path": fused_path,
        "reference_numpy": lambda ws: [numpy_ref.value_and_grad(w) for w in ws],
        "reference_torch": reference_torch,
    }


def _largest_relative_difference(results, reference) -> dict:
    dv = max(abs(f - rf) / max(abs(rf), 1e-300) for (f, _), (rf, _) in zip(results, reference))
    dg = max(float(np.abs(g - rg).max() / max(np.abs(rg).max(), 1e-300)) for (_, g), (_, rg) in zip(results, reference))
    return {"value": float(f"{dv:.3g}"), "gradient": float(f"{dg:.3g}")}


def time_case(
    name: str, dij, voxels, objectives, prescription: float, target: str, repeats: int, iterations: int
) -> dict:
    """Interleaved timings of every side on the case's weight path; times per evaluation in ms."""
    problem = StackedObjectives(dij, voxels, objectives)
    w0 = np.full(dij.shape[1], prescription / problem.mean_row_sum(target))
    ws = weight_path(problem, w0, iterations)
    runs = sides(dij, voxels, objectives, problem)
    reference = runs["reference_numpy"](ws)
    wall: dict[str, list[float]] = {s: [] for s in runs}
    cpu: dict[str, list[float]] = {s: [] for s in runs}
    accuracy = {}
    for _ in range(repeats):
        for side, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            results = run(ws)
            wall[side].append((time.perf_counter() - t0) / len(ws) * 1e3)
            cpu[side].append((time.process_time() - c0) / len(ws) * 1e3)
            accuracy[side] = _largest_relative_difference(results, reference)
    out = {
        "case": name,
        "rows": problem.n_rows,
        "bixels": problem.n_cols,
        "entries": int(problem.indptr[-1]),
        "objectives": [f"{o.structure} {o.type} {o.dose:g} Gy x{o.penalty:g}" for o in objectives],
        "evaluations_per_round": len(ws),
        "rows_skipped_share_on_path": None,
        "per_evaluation_ms": {},
        "relative_difference_from_reference_numpy": accuracy,
    }
    problem.n_full = problem.n_partial = 0
    runs["fused_path"](ws)
    out["rows_skipped_share_on_path"] = round(problem.n_partial / len(ws), 2)
    for side in runs:
        out["per_evaluation_ms"][side] = {
            "wall_best": round(min(wall[side]), 3),
            "wall_median": round(float(np.median(wall[side])), 3),
            "cpu_median": round(float(np.median(cpu[side])), 3),
        }
    ms = out["per_evaluation_ms"]
    out["ratio_reference_over_fused"] = {
        f"{ref} / {fused}": {
            "wall_best": round(ms[ref]["wall_best"] / ms[fused]["wall_best"], 2),
            "wall_median": round(ms[ref]["wall_median"] / ms[fused]["wall_median"], 2),
            "cpu_median": round(ms[ref]["cpu_median"] / ms[fused]["cpu_median"], 2),
        }
        for ref in ("reference_numpy", "reference_torch")
        for fused in ("fused_full", "fused_path")
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--case", choices=("synthetic", "tg119"), action="append", help="default: both")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (every side once per round)")
    ap.add_argument("--iterations", type=int, default=30, help="L-BFGS-B iterations whose weights are evaluated")
    ap.add_argument("--threads", type=int, help="numba and torch threads (default: their choice)")
    args = ap.parse_args()
    import numba
    import torch

    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    load_kernels()
    cases = args.case or ["synthetic", "tg119"]
    out = {
        "benchmark": "bench_objectives",
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cases": [],
    }
    data = Path(args.data)
    for case in cases:
        if case == "tg119" and not (data / "rt" / "pyRadPlan" / "TG119.mat").exists():
            out["cases"].append({"case": "tg119", "skipped": f"no {data / 'rt' / 'pyRadPlan' / 'TG119.mat'}"})
            continue
        built = synthetic_case() if case == "synthetic" else tg119_case(data)
        out["cases"].append(time_case(case, *built, repeats=args.repeats, iterations=args.iterations))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
