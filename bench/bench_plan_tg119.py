"""TG119 7-beam photon plan (gantry 0,51,...,306, 5 mm bixels, 5 mm dose grid) with pyRadPlan 0.5.0
and with MedAI in one run: dose-influence time, optimisation time, target coverage, organ doses,
and each beam's open-field dose compared with pyRadPlan's (gamma 3 %/3 mm, 10 % threshold).

pyRadPlan lives in its own venv; this script (run with MedAI's Python) runs pyRadPlan's half in a
child process with that venv's Python, then MedAI's half in-process, on the same bixels:
    python3 -m venv --system-site-packages /tmp/venv-plan
    /tmp/venv-plan/bin/pip install pyRadPlan==0.5.0 "pydantic==2.11.*"
    python bench/bench_plan_tg119.py --pyradplan-python /tmp/venv-plan/bin/python [--repeats 3] [--device cpu]
Prints one JSON object: wall and process-CPU times (best and median of interleaved repeats), MedAI's
plan with the objectives on the dose grid (as pyRadPlan) and with target/core objectives on the
CT-grid dose (MedAI's default), each evaluated on the CT grid. Both sides use the same objectives (the TG119 file's cst: Core squared
overdose 25 Gy/300, OuterTarget squared deviation 50 Gy/1000, BODY squared overdose 30 Gy/100),
the same photon base data (matRad Generic 6 MV) and a 5 mm dose grid (pyRadPlan's default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for sub in ("MedAICommon", "MedAIPlan"):
    sys.path.insert(0, str(REPO / sub))

ANGLES = [0.0, 51.0, 102.0, 153.0, 204.0, 255.0, 306.0]
PRESCRIPTION = 50.0  # the cst's target objective dose (Gy, whole plan)
STALL = 20  # MedAI also stops on a plateau: < 0.5 % objective decrease over 20 iterations (Logic default)


def _stats(dose, mask):
    from MedAIPlanLib.evaluation.plan_metrics import structure_stats

    s = structure_stats(dose, mask)
    return {k: round(float(v), 3) for k, v in s.items()}


def _warm_up(machine):
    """Load numba's compiled kernels (cached on disk; like an import, not timed) on a tiny case."""
    from MedAICommonLib.geometry import Geometry
    from MedAIPlanLib.dose.beams import make_beams
    from MedAIPlanLib.dose.dose_influence import compute_dij
    from MedAIPlanLib.optimisation.fluence import Objective, optimise_fluence

    geo = Geometry((5.0, 5.0, 5.0), (-50.0, -50.0, -50.0), np.eye(3), "LPS", (21, 21, 21))
    dens = np.ones(geo.shape_kji, np.float32)
    target = np.zeros(geo.shape_kji, bool)
    target[8:13, 8:13, 8:13] = True
    dij = compute_dij(dens, geo, make_beams(target, geo, [0.0], bixel_width=5.0), machine, dij_sampling=True)
    body = np.flatnonzero(~target.ravel())
    from MedAIPlanLib.optimisation.objective_matrix import load_kernels

    load_kernels()
    optimise_fluence(
        dij.matrix,
        {"t": np.flatnonzero(target.ravel()), "b": body},
        [Objective("t", "squared_deviation", 2.0), Objective("b", "squared_overdose", 1.0)],
        2.0,
        "t",
        max_iter=5,
    )


def run_medai(data: Path, device: str, rays=None, repeats: int = 1):
    from MedAIPlanLib.dose.beams import Beam, make_beams
    from MedAIPlanLib.dose.ct_grid import ct_factor, exclusive_ct_masks
    from MedAIPlanLib.dose.dose_influence import compute_dij, dose_to_ct_grid, resample_nearest
    from MedAIPlanLib.dose.matrad_io import load_matrad_patient, load_photon_machine
    from MedAIPlanLib.optimisation.fluence import Objective, exclusive_voxels, optimise_fluence

    p = load_matrad_patient(data / "rt" / "pyRadPlan" / "TG119.mat")
    machine = load_photon_machine(data / "rt" / "matRad" / "photons_Generic.mat")
    _warm_up(machine)
    target = p.structure("OuterTarget").mask
    times = {
        "dij_s": [],
        "dij_cpu_s": [],
        "optimisation_s": [],
        "optimisation_cpu_s": [],
        "optimisation_ct_grid_s": [],
        "optimisation_ct_grid_cpu_s": [],
    }
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        beams = make_beams(target, p.geometry, ANGLES, bixel_width=5.0)
        if rays is not None:  # the same bixels as pyRadPlan's stf (it grows the target by one bixel width)
            beams = [Beam(b.gantry_deg, b.couch_deg, iso, r, 5.0) for b, (iso, r) in zip(beams, rays)]
        dij = compute_dij(
            p.density,
            p.geometry,
            beams,
            machine,
            voxel_mask=p.structure("BODY").mask,
            dose_resolution_mm=5.0,
            dij_sampling=True,
            device=device,
        )  # as pyRadPlan's default
        times["dij_s"].append(time.perf_counter() - t0)
        times["dij_cpu_s"].append(time.process_time() - c0)
        masks_d = {
            s.name: resample_nearest(s.mask.astype(np.float32), p.geometry, dij.geometry) > 0.5 for s in p.structures
        }
        prio = {s.name: s.priority for s in p.structures}
        voxels = exclusive_voxels(masks_d, prio)
        objectives = [Objective(s.name, o["type"], o["dose"], o["penalty"]) for s in p.structures for o in s.objectives]
        # (a) objectives on the dose grid, as pyRadPlan; pyRadPlan's scipy solver: 500 iterations, tol 1e-5
        t1, c1 = time.perf_counter(), time.process_time()
        res = optimise_fluence(
            dij.matrix,
            voxels,
            objectives,
            PRESCRIPTION,
            "OuterTarget",
            fractions=1,
            max_iter=500,
            device=device,
            tol=1e-5,
            stall_iterations=STALL,
        )
        times["optimisation_s"].append(time.perf_counter() - t1)
        times["optimisation_cpu_s"].append(time.process_time() - c1)
        # (b) target and core objectives on the CT-grid dose (MedAI's plan default), body on the dose grid
        t2, c2 = time.perf_counter(), time.process_time()
        inner = exclusive_ct_masks({s.name: s.mask for s in p.structures if s.name != "BODY"}, prio)
        blocks = {n: ct_factor(dij.geometry, p.geometry, m) for n, m in inner.items()}
        res_ct = optimise_fluence(
            dij.matrix,
            voxels,
            objectives,
            PRESCRIPTION,
            "OuterTarget",
            fractions=1,
            max_iter=500,
            device=device,
            tol=1e-5,
            blocks=blocks,
            stall_iterations=STALL,
        )
        times["optimisation_ct_grid_s"].append(time.perf_counter() - t2)
        times["optimisation_ct_grid_cpu_s"].append(time.process_time() - c2)
    dose = dose_to_ct_grid(dij.dose(res.weights), dij.geometry, p.geometry)
    dose_ct = dose_to_ct_grid(dij.dose(res_ct.weights), dij.geometry, p.geometry)
    open_doses = [
        dose_to_ct_grid(dij.beam_dose(np.ones(dij.num_bixels), b), dij.geometry, p.geometry) for b in range(len(beams))
    ]
    out = {
        **{k: _summary(v) for k, v in times.items()},
        "iterations": res.iterations,
        "iterations_ct_grid": res_ct.iterations,
        "num_bixels": dij.num_bixels,
        "dij_nnz": int(dij.matrix.nnz),
        "structures": {s.name: _stats(dose, s.mask) for s in p.structures},
        "structures_ct_grid_objectives": {s.name: _stats(dose_ct, s.mask) for s in p.structures},
    }
    return p, beams, out, open_doses


def _summary(values):
    return {
        "best": round(float(np.min(values)), 3),
        "median": round(float(np.median(values)), 3),
        "all": [round(float(v), 3) for v in values],
    }


def run_pyradplan(data: Path):
    from pyRadPlan import PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf, load_patient

    ct, cst = load_patient(str(data / "rt" / "pyRadPlan" / "TG119.mat"))
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": ANGLES, "couch_angles": [0.0] * len(ANGLES), "bixel_width": 5.0}
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": 5.0, "y": 5.0, "z": 5.0}}}
    t0, c0 = time.perf_counter(), time.process_time()
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    t_dij, c_dij = time.perf_counter() - t0, time.process_time() - c0
    t1, c1 = time.perf_counter(), time.process_time()
    opt_info = {}
    fluence = fluence_optimization(ct, cst, stf, dij, pln, opt_info=opt_info)
    t_opt, c_opt = time.perf_counter() - t1, time.process_time() - c1
    result = dij.compute_result_ct_grid(fluence)
    dose_img = result["physical_dose"]
    import SimpleITK as sitk

    dose = sitk.GetArrayFromImage(dose_img) if not isinstance(dose_img, np.ndarray) else dose_img
    beam_of = np.concatenate([np.full(b.total_number_of_bixels, i) for i, b in enumerate(stf.beams)])
    open_doses = []
    for b in range(len(stf.beams)):
        r = dij.compute_result_ct_grid((beam_of == b).astype(float))["physical_dose"]
        open_doses.append(sitk.GetArrayFromImage(r) if not isinstance(r, np.ndarray) else r)
    n_bixels = int(len(fluence))
    rays = [
        (np.asarray(b.iso_center, float), np.array([np.asarray(r.ray_pos_bev, float)[[0, 2]] for r in b.rays]))
        for b in stf.beams
    ]
    return (
        dose,
        open_doses,
        rays,
        {
            "dij_s": t_dij,
            "optimisation_s": t_opt,
            "dij_cpu_s": c_dij,
            "optimisation_cpu_s": c_opt,
            "num_bixels": n_bixels,
            "iterations": opt_info.get("num_iter"),
            "dij_nnz": _nnz(dij),
        },
    )


def _nnz(dij):
    try:
        return int(dij.physical_dose.flat[0].nnz)
    except (AttributeError, TypeError, IndexError):
        return None


def _worker(data: Path, out: Path) -> None:
    dose, open_doses, rays, prp = run_pyradplan(data)
    np.savez(
        out,
        dose=np.asarray(dose),
        open_doses=np.stack([np.asarray(d) for d in open_doses]),
        iso=np.stack([r[0] for r in rays]),
        ray_counts=np.array([len(r[1]) for r in rays]),
        rays=np.concatenate([r[1] for r in rays]),
        info=json.dumps(prp),
    )


def _pyradplan_child(python: str, data: Path):
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pyradplan.npz"
        subprocess.run(
            [python, str(Path(__file__).resolve()), "--data", str(data), "--worker", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        z = np.load(out)
        splits = np.cumsum(z["ray_counts"])[:-1]
        rays = list(zip(z["iso"], np.split(z["rays"], splits)))
        return z["dose"], list(z["open_doses"]), rays, json.loads(str(z["info"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pyradplan-python", help="Python of the venv with pyRadPlan 0.5.0 (default: this one)")
    ap.add_argument("--skip-pyradplan", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of both sides (best and median)")
    ap.add_argument("--threads", type=int, help="torch and numba threads for MedAI (default: their choice)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data)
    if args.worker:
        _worker(data, Path(args.worker))
        return
    import torch

    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    rays = None
    prp_runs, medai_runs = [], []
    for _ in range(max(1, args.repeats)):
        if not args.skip_pyradplan:
            if args.pyradplan_python:
                dose, open_doses, rays, prp = _pyradplan_child(args.pyradplan_python, data)
            else:
                dose, open_doses, rays, prp = run_pyradplan(data)
            prp_runs.append(prp)
        p, beams, medai, medai_open = run_medai(data, args.device, rays)
        medai_runs.append(medai)
    medai = medai_runs[-1]
    for key in (
        "dij_s",
        "dij_cpu_s",
        "optimisation_s",
        "optimisation_cpu_s",
        "optimisation_ct_grid_s",
        "optimisation_ct_grid_cpu_s",
    ):
        medai[key] = _summary([r[key]["best"] for r in medai_runs])
    out = {
        "case": "TG119 7 beams, 5 mm bixels, 5 mm dose grid",
        "torch_threads": torch.get_num_threads(),
        "repeats": max(1, args.repeats),
        "load_average": list(__import__("os").getloadavg()),
        "medai": medai,
    }
    if not args.skip_pyradplan:
        _compare_with_pyradplan(out, p, dose, open_doses, prp_runs, medai, medai_open)
    print(json.dumps(out, indent=1, default=float))


def _compare_with_pyradplan(out: dict, p, dose, open_doses, prp_runs: list, medai: dict, medai_open) -> None:
    """Add pyRadPlan's figures to ``out``: its timings (best and median), DVH statistics, MedAI's speed-ups and
    the 3 %/3 mm gamma pass rate and dose ratio of each open field."""
    from MedAIPlanLib.evaluation.plan_metrics import gamma_pass_rate

    if dose.shape != p.hu.shape:  # pyRadPlan returns (z, y, x) like SimpleITK = KJI
        dose = np.asarray(dose).reshape(p.hu.shape)
    prp = dict(prp_runs[-1])
    for key in ("dij_s", "dij_cpu_s", "optimisation_s", "optimisation_cpu_s"):
        prp[key] = _summary([r[key] for r in prp_runs])
    prp["structures"] = {s.name: _stats(dose, s.mask) for s in p.structures}
    out["pyradplan"] = prp
    for key in ("dij_s", "dij_cpu_s", "optimisation_s", "optimisation_cpu_s"):
        out[f"speedup_{key}"] = {k: round(prp[key][k] / medai[key][k], 2) for k in ("best", "median")}
    out["speedup_optimisation_ct_grid_s"] = {
        k: round(prp["optimisation_s"][k] / medai["optimisation_ct_grid_s"][k], 2) for k in ("best", "median")
    }
    sp_kji = p.geometry.spacing[::-1]
    rates = []
    for ours, theirs in zip(medai_open, open_doses):
        theirs = np.asarray(theirs).reshape(p.hu.shape)
        scale = float(np.sum(theirs * ours) / max(np.sum(ours * ours), 1e-12))
        rates.append(
            {
                "gamma_3_3_percent": gamma_pass_rate(theirs, ours, sp_kji, 3.0, 3.0, 10.0),
                "dose_ratio_pyradplan_over_medai": scale,
            }
        )
    out["open_field_gamma"] = rates


if __name__ == "__main__":
    main()
