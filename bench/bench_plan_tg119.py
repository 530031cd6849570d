"""TG119 7-beam photon plan (gantry 0,51,...,306, 5 mm bixels, 5 mm dose grid) with pyRadPlan 0.5.0
and with MedAI in one run: dose-influence time, optimisation time, target coverage, organ doses,
and each beam's open-field dose compared with pyRadPlan's (gamma 3 %/3 mm, 10 % threshold).

pyRadPlan lives in its own venv; this script (run with MedAI's Python) runs pyRadPlan's half in a
child process with that venv's Python, then MedAI's half in-process, on the same bixels:
    python3 -m venv --system-site-packages /tmp/venv-plan
    /tmp/venv-plan/bin/pip install pyRadPlan==0.5.0 "pydantic==2.11.*"
    python bench/bench_plan_tg119.py --pyradplan-python /tmp/venv-plan/bin/python [--device cpu]
Prints one JSON object. Both sides use the same objectives (the TG119 file's cst: Core squared
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
PRESCRIPTION = 50.0     # the cst's target objective dose (Gy, whole plan)


def _stats(dose, mask):
    from MedAIPlanLib.plan_metrics import structure_stats

    s = structure_stats(dose, mask)
    return {k: round(float(v), 3) for k, v in s.items()}


def run_medai(data: Path, device: str, rays=None):
    from MedAIPlanLib.beams import Beam, make_beams
    from MedAIPlanLib.dose_influence import compute_dij, dose_to_ct_grid, resample_nearest
    from MedAIPlanLib.fluence import Objective, exclusive_voxels, optimise_fluence
    from MedAIPlanLib.matrad_io import load_matrad_patient, load_photon_machine

    p = load_matrad_patient(data / "rt" / "pyRadPlan" / "TG119.mat")
    machine = load_photon_machine(data / "rt" / "matRad" / "photons_Generic.mat")
    target = p.structure("OuterTarget").mask
    t0 = time.perf_counter()
    beams = make_beams(target, p.geometry, ANGLES, bixel_width=5.0)
    if rays is not None:   # the same bixels as pyRadPlan's stf (it grows the target by one bixel width)
        beams = [Beam(b.gantry_deg, b.couch_deg, iso, r, 5.0) for b, (iso, r) in zip(beams, rays)]
    dij = compute_dij(p.density, p.geometry, beams, machine, voxel_mask=p.structure("BODY").mask,
                      dose_resolution_mm=5.0, dij_sampling=True, device=device)   # as pyRadPlan's default
    t_dij = time.perf_counter() - t0
    masks_d = {s.name: resample_nearest(s.mask.astype(np.float32), p.geometry, dij.geometry) > 0.5
               for s in p.structures}
    voxels = exclusive_voxels(masks_d, {s.name: s.priority for s in p.structures})
    objectives = [Objective(s.name, o["type"], o["dose"], o["penalty"]) for s in p.structures for o in s.objectives]
    t1 = time.perf_counter()
    res = optimise_fluence(dij.matrix, voxels, objectives, PRESCRIPTION, "OuterTarget", fractions=1, max_iter=500,
                           device=device, tol=1e-5)   # pyRadPlan's scipy solver: 500 iterations, tol 1e-5
    t_opt = time.perf_counter() - t1
    dose = dose_to_ct_grid(dij.dose(res.weights), dij.geometry, p.geometry)
    open_doses = [dose_to_ct_grid(dij.beam_dose(np.ones(dij.num_bixels), b), dij.geometry, p.geometry)
                  for b in range(len(beams))]
    return p, beams, {"dij_s": t_dij, "optimisation_s": t_opt, "iterations": res.iterations,
                      "num_bixels": dij.num_bixels, "dij_nnz": int(dij.matrix.nnz),
                      "structures": {s.name: _stats(dose, s.mask) for s in p.structures}}, open_doses


def run_pyradplan(data: Path):
    from pyRadPlan import PhotonPlan, calc_dose_influence, fluence_optimization, generate_stf, load_patient

    ct, cst = load_patient(str(data / "rt" / "pyRadPlan" / "TG119.mat"))
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": ANGLES, "couch_angles": [0.0] * len(ANGLES), "bixel_width": 5.0}
    pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": 5.0, "y": 5.0, "z": 5.0}}}
    t0 = time.perf_counter()
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    t_dij = time.perf_counter() - t0
    t1 = time.perf_counter()
    opt_info = {}
    fluence = fluence_optimization(ct, cst, stf, dij, pln, opt_info=opt_info)
    t_opt = time.perf_counter() - t1
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
    rays = [(np.asarray(b.iso_center, float), np.array([np.asarray(r.ray_pos_bev, float)[[0, 2]] for r in b.rays]))
            for b in stf.beams]
    return dose, open_doses, rays, {"dij_s": t_dij, "optimisation_s": t_opt, "num_bixels": n_bixels,
                                    "iterations": opt_info.get("num_iter"), "dij_nnz": _nnz(dij)}


def _nnz(dij):
    try:
        return int(dij.physical_dose.flat[0].nnz)
    except (AttributeError, TypeError, IndexError):
        return None


def _worker(data: Path, out: Path) -> None:
    dose, open_doses, rays, prp = run_pyradplan(data)
    np.savez(out, dose=np.asarray(dose), open_doses=np.stack([np.asarray(d) for d in open_doses]),
             iso=np.stack([r[0] for r in rays]), ray_counts=np.array([len(r[1]) for r in rays]),
             rays=np.concatenate([r[1] for r in rays]), info=json.dumps(prp))


def _pyradplan_child(python: str, data: Path):
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pyradplan.npz"
        subprocess.run([python, str(Path(__file__).resolve()), "--data", str(data), "--worker", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    ap.add_argument("--threads", type=int, help="torch intra-op threads for MedAI (default: torch's choice)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data)
    if args.worker:
        _worker(data, Path(args.worker))
        return
    from MedAIPlanLib.plan_metrics import gamma_pass_rate

    rays = None
    if not args.skip_pyradplan:
        if args.pyradplan_python:
            dose, open_doses, rays, prp = _pyradplan_child(args.pyradplan_python, data)
        else:
            dose, open_doses, rays, prp = run_pyradplan(data)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    p, beams, medai, medai_open = run_medai(data, args.device, rays)
    out = {"case": "TG119 7 beams, 5 mm bixels, 5 mm dose grid", "torch_threads": torch.get_num_threads(),
           "medai": medai}
    if not args.skip_pyradplan:
        if dose.shape != p.hu.shape:       # pyRadPlan returns (z, y, x) like SimpleITK = KJI
            dose = np.asarray(dose).reshape(p.hu.shape)
        prp["structures"] = {s.name: _stats(dose, s.mask) for s in p.structures}
        out["pyradplan"] = prp
        out["speedup_dij"] = prp["dij_s"] / medai["dij_s"]
        out["speedup_optimisation"] = prp["optimisation_s"] / medai["optimisation_s"]
        sp_kji = p.geometry.spacing[::-1]
        rates = []
        for ours, theirs in zip(medai_open, open_doses):
            theirs = np.asarray(theirs).reshape(p.hu.shape)
            scale = float(np.sum(theirs * ours) / max(np.sum(ours * ours), 1e-12))
            rates.append({"gamma_3_3_percent": gamma_pass_rate(theirs, ours, sp_kji, 3.0, 3.0, 10.0),
                          "dose_ratio_pyradplan_over_medai": scale})
        out["open_field_gamma"] = rates
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
