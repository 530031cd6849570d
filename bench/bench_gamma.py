"""Gamma: MedAI (torch, sorted-offset search) vs pymedphys.gamma on SlicerRT's EclipseEnt Day1/Day2 pair.

Same data and criteria for both: 3 %/3 mm global (normalised to the reference max), 10 % low-dose
cut-off on the reference, maximum gamma 2, interpolated search with a 0.3 mm step (pymedphys'
``interp_fraction=10``; MedAI ``step_mm=DTA/10``). Prints one JSON object.

    MEDAI_PEER_SITE=/tmp/venv-eval/lib/python3.11/site-packages python bench/bench_gamma.py [--crop N]

(run with MedAI's venv; the peer's site-packages are appended to ``sys.path``, not prepended.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.gamma import gamma_index


def load(path, crop):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    geometry = Geometry.from_sitk(image)
    if crop:
        # a crop of N voxels per axis around the reference maximum
        center = np.array(np.unravel_index(np.argmax(array), array.shape))
        lo = np.clip(center - crop // 2, 0, np.array(array.shape) - crop)
        array = array[lo[0]:lo[0] + crop, lo[1]:lo[1] + crop, lo[2]:lo[2] + crop]
        origin = geometry.index_to_point(lo[::-1].astype(float))
        geometry = Geometry(geometry.spacing, origin, geometry.direction, "LPS", array.shape)
    return array, geometry


def axes(geometry: Geometry, shape):
    """pymedphys axes (z, y, x) in mm for an axis-aligned LPS grid."""
    return tuple(geometry.origin[a] + geometry.spacing[a] * np.arange(shape[2 - a]) for a in (2, 1, 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--crop", type=int, default=0, help="crop N voxels per axis (0: whole grid)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interp-algo", default="scipy", help="pymedphys interpolation: scipy or pymedphys (needs numba)")
    args = parser.parse_args()
    folder = Path(args.data) / "rt" / "SlicerRT"
    ref, geo = load(folder / "EclipseEnt_Dose.nrrd", args.crop)
    ev, _ = load(folder / "EclipseEnt_Dose_Day2.nrrd", args.crop)
    # recompute the crop of Day2 around Day1's maximum
    if args.crop:
        full_ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "EclipseEnt_Dose.nrrd")))
        full_ev = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "EclipseEnt_Dose_Day2.nrrd")))
        center = np.array(np.unravel_index(np.argmax(full_ref), full_ref.shape))
        lo = np.clip(center - args.crop // 2, 0, np.array(full_ref.shape) - args.crop)
        sl = tuple(slice(a, a + args.crop) for a in lo)
        ref, ev = full_ref[sl].astype(np.float64), full_ev[sl].astype(np.float64)
    settings = {"dose_percent": 3.0, "dta_mm": 3.0, "cutoff_percent": 10.0, "max_gamma": 2.0, "interp_fraction": 10,
                "pymedphys_interp_algo": args.interp_algo}
    if os.environ.get("MEDAI_PEER_SITE"):
        sys.path.append(os.environ["MEDAI_PEER_SITE"])
    import pymedphys

    start = time.perf_counter()
    ours = gamma_index(ref, geo, ev, geo, 3.0, 3.0, 10.0, local=False, max_gamma=2.0, step_mm=0.3, device=args.device)
    t_ours = time.perf_counter() - start
    ax = axes(geo, ref.shape)
    start = time.perf_counter()
    theirs = pymedphys.gamma(ax, ref, ax, ev, 3.0, 3.0, lower_percent_dose_cutoff=10.0, interp_fraction=10,
                             max_gamma=2.0, local_gamma=False, quiet=True, interp_algo=args.interp_algo)
    t_theirs = time.perf_counter() - start
    valid = ~np.isnan(theirs)
    pass_theirs = float(100.0 * np.mean(theirs[valid] <= 1.0))
    both = valid & ~np.isnan(ours.gamma)
    print(json.dumps({
        "data": "SlicerRT EclipseEnt Day1 (reference) vs Day2", "grid": list(ref.shape), "settings": settings,
        "evaluated_voxels": {"medai": ours.evaluated_voxels, "pymedphys": int(valid.sum())},
        "time_s": {"medai": round(t_ours, 2), "pymedphys": round(t_theirs, 2)},
        "speedup": round(t_theirs / t_ours, 1),
        "pass_rate_percent": {"medai": round(ours.pass_rate, 3), "pymedphys": round(pass_theirs, 3)},
        "pass_rate_difference": round(abs(ours.pass_rate - pass_theirs), 3),
        "median_abs_gamma_difference": float(np.median(np.abs(ours.gamma[both] - theirs[both]))),
        "device": args.device,
    }, indent=1))


if __name__ == "__main__":
    main()
