"""A 512 x 512 x 600 CT (0.98 x 0.98 x 1.0 mm) planned on the CPU: peak memory (RSS) and time.

Synthetic patient built here (no files): a water cylinder (radius 200 mm, axis S-I) in air, a
40 mm spherical target at the centre, a 25 mm organ 45 mm posterior of it, the body. The plan runs
through MedAIPlanLogic on MRML nodes exactly as the panel does: 7 beams (0, 51, ..., 306 deg), 5 mm
bixels, 5 mm dose grid; the memory estimate is printed with the measured peak RSS
(``resource.getrusage``; Linux reports KiB). MedAI only, no comparison peer.
    python bench/bench_plan_large_ct.py [--shape 600,512,512] [--dose-grid 5]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for sub in ("MedAICommon", "MedAIPlan"):
    sys.path.insert(0, str(REPO / sub))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build(scene, shape_kji, spacing):
    from MedAICommonLib import bridge
    from MedAICommonLib.bridge.segmentations import SegmentInfo
    from MedAICommonLib.geometry import Geometry

    geo = Geometry(
        spacing=spacing,
        origin=tuple(-(np.array(shape_kji[::-1]) - 1) / 2 * np.array(spacing)),
        space="RAS",
        shape_kji=shape_kji,
    )
    nk, nj, ni = shape_kji
    r = (np.arange(ni) - (ni - 1) / 2) * spacing[0]
    a = (np.arange(nj) - (nj - 1) / 2) * spacing[1]
    s = (np.arange(nk) - (nk - 1) / 2) * spacing[2]
    disk = (r[None, :] ** 2 + a[:, None] ** 2) <= 200.0**2
    ct = np.full(shape_kji, -1000, np.int16)
    ct[:, disk] = 0
    labels = np.zeros(shape_kji, np.uint8)
    labels[:, disk] = 1
    near = np.flatnonzero(np.abs(s) <= 30)
    for k in near:  # spheres only touch a few slices
        d_t = r[None, :] ** 2 + a[:, None] ** 2 + s[k] ** 2
        d_o = r[None, :] ** 2 + (a[:, None] + 45.0) ** 2 + s[k] ** 2
        labels[k][d_o <= 12.5**2] = 3
        labels[k][d_t <= 20.0**2] = 2
    ct_node = bridge.create_volume(scene, ct, geo, "large CT")
    del ct
    seg = bridge.create_segmentation(
        scene,
        labels,
        geo,
        [SegmentInfo(1, "body"), SegmentInfo(2, "target"), SegmentInfo(3, "organ")],
        "large structures",
        reference_volume=ct_node,
    )
    return ct_node, seg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="600,512,512", help="k,j,i voxels")
    ap.add_argument("--spacing", default="0.98,0.98,1.0", help="x,y,z mm")
    ap.add_argument("--dose-grid", type=float, default=5.0)
    ap.add_argument("--machine", default=str(REPO.parent / "shared" / "data" / "rt" / "matRad" / "photons_Generic.mat"))
    args = ap.parse_args()
    from MedAICommonLib.runtime import get_scene
    from MedAIPlanLib.logic import MedAIPlanLogic

    shape = tuple(int(v) for v in args.shape.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    scene = get_scene()
    t0 = time.perf_counter()
    ct, seg = build(scene, shape, spacing)
    t_build = time.perf_counter() - t0
    rss_inputs = _rss_gib()
    logic = MedAIPlanLogic(scene, machine_path=args.machine if Path(args.machine).is_file() else None)
    angles = [0, 51, 102, 153, 204, 255, 306]
    estimate = logic.estimate_plan_memory(ct, seg, "target", gantry_angles=angles, dose_grid_mm=args.dose_grid)
    t1, c1 = time.perf_counter(), time.process_time()
    logic.plan(
        ct,
        seg,
        "target",
        60.0,
        fractions=30,
        gantry_angles=angles,
        bixel_width_mm=5.0,
        dose_grid_mm=args.dose_grid,
        device="cpu",
    )
    info = logic.last_result
    out = {
        "case": f"{shape[::-1]} voxels (i,j,k) of {spacing} mm, 7 beams, 5 mm bixels, {args.dose_grid} mm dose grid",
        "build_inputs_s": round(t_build, 1),
        "plan_s": round(time.perf_counter() - t1, 1),
        "plan_cpu_s": round(time.process_time() - c1, 1),
        "timings": {k: round(float(v), 2) for k, v in info.timings.items()},
        "num_bixels": info.num_bixels,
        "dij_nnz": info.dij_nnz,
        "iterations": info.iterations,
        "peak_rss_after_inputs_GiB": round(rss_inputs, 2),
        "peak_rss_GiB": round(_rss_gib(), 2),
        "estimate": estimate,
        "target": info.metrics["target"],
        "organ": info.metrics["organ"],
    }
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
