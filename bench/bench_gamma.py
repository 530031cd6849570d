"""Gamma: MedAI (torch, sorted-offset search, interpolated by default) vs pymedphys.gamma at equal settings.

Two cases from SlicerRT's test data (``--case``):

* ``prostate`` (default; issue 14): EclipseProstate_Dose against a copy shifted 2 mm along x (grid origin),
  scaled +3 % and with Gaussian noise of 1 % of the maximum (seed 14), 2 %/2 mm;
* ``ent``: EclipseEnt Day1 (reference) vs Day2, 3 %/3 mm (SlicerRT's DoseComparison test pair).

Same settings for both sides: global gamma normalised to the reference maximum, 10 % low-dose cut-off on
the reference, maximum gamma 2 (search radius 2 x DTA), evaluated dose interpolated trilinearly with
steps of DTA/10 (pymedphys ``interp_fraction=10``; MedAI's default ``step_mm = DTA/10``). MedAI's
voxel-lattice mode (``interpolation="none"``, SlicerRT's) is timed too. What differs: pymedphys walks
spherical shells of radius step, 2 step, ... and interpolates on each; MedAI searches a DTA/4 lattice
sorted by length (stopping per voxel once no shorter offset can win), then refines each voxel's best
offset with a 27-point pattern search down to DTA/20. Prints one JSON object.

    MEDAI_PEER_SITE=/tmp/venv-peer/lib/python3.11/site-packages python bench/bench_gamma.py [--case ent] [--crop N]

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
from MedAIPlanLib.evaluation.gamma import gamma_index


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.float64), Geometry.from_sitk(image)


def load_case(folder: Path, case: str):
    """(reference, its geometry, evaluated, its geometry, dose %, DTA mm, description)."""
    if case == "ent":
        ref, geo = _read(folder / "EclipseEnt_Dose.nrrd")
        ev, ev_geo = _read(folder / "EclipseEnt_Dose_Day2.nrrd")
        return ref, geo, ev, ev_geo, 3.0, 3.0, "SlicerRT EclipseEnt Day1 (reference) vs Day2"
    ref, geo = _read(folder / "EclipseProstate_Dose.nrrd")
    rng = np.random.default_rng(14)
    ev = ref * 1.03 + rng.normal(0.0, 0.01 * ref.max(), ref.shape)
    ev_geo = Geometry(
        geo.spacing, np.asarray(geo.origin) + np.array([2.0, 0.0, 0.0]), geo.direction, geo.space, ref.shape
    )
    return ref, geo, ev, ev_geo, 2.0, 2.0, "SlicerRT EclipseProstate vs itself shifted 2 mm, +3 %, 1 % noise (seed 14)"


def crop(array, geometry: Geometry, n: int, center):
    """N voxels per axis around ``center`` (KJI), with the cropped grid's geometry."""
    lo = np.clip(np.asarray(center) - n // 2, 0, np.array(array.shape) - n)
    origin = geometry.index_to_point(lo[::-1].astype(float))
    return array[tuple(slice(a, a + n) for a in lo)], Geometry(
        geometry.spacing, origin, geometry.direction, geometry.space, (n, n, n)
    )


def axes(geometry: Geometry, shape):
    """pymedphys axes (z, y, x) in mm for an axis-aligned grid."""
    return tuple(geometry.origin[a] + geometry.spacing[a] * np.arange(shape[2 - a]) for a in (2, 1, 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--case", default="prostate", choices=["prostate", "ent"])
    parser.add_argument("--crop", type=int, default=0, help="crop N voxels per axis around the maximum (0: whole grid)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--interp-algo", default="scipy", help="pymedphys interpolation: scipy or pymedphys (numba)")
    args = parser.parse_args()
    ref, geo, ev, ev_geo, dose_percent, dta, description = load_case(Path(args.data) / "rt" / "SlicerRT", args.case)
    if args.crop:
        center = np.unravel_index(np.argmax(ref), ref.shape)
        ref, geo = crop(ref, geo, args.crop, center)
        ev, ev_geo = crop(ev, ev_geo, args.crop, center)
    settings = {
        "dose_percent": dose_percent,
        "dta_mm": dta,
        "cutoff_percent": 10.0,
        "max_gamma": 2.0,
        "interp_fraction": 10,
        "medai_step_mm": dta / 10,
        "pymedphys_interp_algo": args.interp_algo,
    }
    out = {"data": description, "grid": list(ref.shape), "settings": settings, "device": args.device}
    start = time.perf_counter()
    ours = gamma_index(ref, geo, ev, ev_geo, dose_percent, dta, 10.0, max_gamma=2.0, device=args.device)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    lattice = gamma_index(
        ref, geo, ev, ev_geo, dose_percent, dta, 10.0, max_gamma=2.0, device=args.device, interpolation="none"
    )
    out["medai_voxel_lattice"] = {
        "time_s": round(time.perf_counter() - start, 2),
        "pass_rate_percent": round(lattice.pass_rate, 3),
    }
    out["time_s"] = {"medai": round(t_ours, 2)}
    out["pass_rate_percent"] = {"medai": round(ours.pass_rate, 3)}
    out["evaluated_voxels"] = {"medai": ours.evaluated_voxels}
    if not args.skip_peer:
        if os.environ.get("MEDAI_PEER_SITE"):
            sys.path.append(os.environ["MEDAI_PEER_SITE"])
        import pymedphys

        start = time.perf_counter()
        theirs = pymedphys.gamma(
            axes(geo, ref.shape),
            ref,
            axes(ev_geo, ev.shape),
            ev,
            dose_percent,
            dta,
            lower_percent_dose_cutoff=10.0,
            interp_fraction=10,
            max_gamma=2.0,
            local_gamma=False,
            quiet=True,
            interp_algo=args.interp_algo,
        )
        t_theirs = time.perf_counter() - start
        valid = ~np.isnan(theirs)
        both = valid & ~np.isnan(ours.gamma)
        pass_theirs = float(100.0 * np.mean(theirs[valid] <= 1.0))
        out["time_s"]["pymedphys"] = round(t_theirs, 2)
        out["speedup"] = round(t_theirs / t_ours, 1)
        out["pass_rate_percent"]["pymedphys"] = round(pass_theirs, 3)
        out["evaluated_voxels"]["pymedphys"] = int(valid.sum())
        out["pass_rate_difference"] = round(abs(ours.pass_rate - pass_theirs), 3)
        out["median_abs_gamma_difference"] = float(np.median(np.abs(ours.gamma[both] - theirs[both])))
        out["pass_fail_agreement_percent"] = float(100.0 * np.mean((ours.gamma[both] <= 1) == (theirs[both] <= 1)))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
