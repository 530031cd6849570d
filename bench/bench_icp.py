"""ICP on the Stanford bunny (bun090 onto bun000, mm): MedAI vs VTK's vtkIterativeClosestPointTransform (rigid)
vs Open3D's registration_icp (and, from identity, Open3D's global FPFH + RANSAC then ICP). Prints one JSON object.

Two settings, same data for every method:
* ``from_identity``: the real task (scans 90 degrees apart, about half of each out of the other's view, no
  initial guess). MedAI with its DEFAULT options (point-to-plane, 192 spread starts ranked by the share of
  samples landing on the fixed surface, trim auto) and, for reference, the previous default (principal-axes
  starts, 90 % trim: it ends far off and must say so, ``reliable`` false). VTK and Open3D ICP are local methods
  started at identity; Open3D's own answer to large rotations is the global FPFH + RANSAC step, timed with its
  ICP refinement.
* ``from_common_start``: local refinement from the ground truth perturbed by 10 degrees / 5 mm, one start each
  (median time of 3 runs). Times include each method's own set-up (KD-tree, normals).

What differs between the sides: outlier rejection (MedAI trims to the measured overlap; Open3D keeps pairs
closer than 5 mm; VTK keeps all pairs), the points used (MedAI a random 5000 of the moving scan, VTK 5000
landmarks, Open3D all 30379); all stop after at most 100 iterations, point-to-plane normals from 12 neighbours.

Open3D runs in another interpreter (``OPEN3D_PYTHON``, default /tmp/venv-reg/bin/python; open3d-cpu 0.20 needs
libusb-1.0 on ``LD_LIBRARY_PATH``) when it is not importable here. Usage: ``python bench/bench_icp.py [DATA_DIR]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import vtk
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing" / "Python"))
from test_register_icp import bunny_pair, pose_errors  # noqa: E402

from MedAICommonLib.notices import MedAIWarning  # noqa: E402
from MedAIRegisterLib.pointsets.icp import icp  # noqa: E402

REPEATS = 3  # common-start runs: median time of 3 (the machine is shared)

OPEN3D_SCRIPT = r"""
import json, sys, time, numpy as np, open3d as o3d
data = np.load(sys.argv[1])
fixed, moving = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
fixed.points = o3d.utility.Vector3dVector(data["fixed"]); moving.points = o3d.utility.Vector3dVector(data["moving"])
out = {}
for name in ("identity", "start"):
    init = np.eye(4) if name == "identity" else data["start"]
    for kind in ("point_to_point", "point_to_plane"):
        times = []
        for _ in range(int(sys.argv[2]) if name == "start" else 1):
            t0 = time.perf_counter()
            if kind == "point_to_plane":
                fixed.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(12))
                estimation = o3d.pipelines.registration.TransformationEstimationPointToPlane()
            else:
                estimation = o3d.pipelines.registration.TransformationEstimationPointToPoint()
            result = o3d.pipelines.registration.registration_icp(
                moving, fixed, 5.0, init, estimation,
                o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=100))
            times.append(time.perf_counter() - t0)
        out[f"{name}_{kind}"] = {"time_s": float(np.median(times)), "matrix": np.asarray(result.transformation).tolist()}
o3d.utility.random.seed(0)
t0 = time.perf_counter()
voxel = 2.0
down = [cloud.voxel_down_sample(voxel) for cloud in (moving, fixed)]
for cloud in down:
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
features = [o3d.pipelines.registration.compute_fpfh_feature(c, o3d.geometry.KDTreeSearchParamHybrid(
    radius=5 * voxel, max_nn=100)) for c in down]
coarse = o3d.pipelines.registration.registration_ransac_based_on_feature_matching(
    down[0], down[1], features[0], features[1], True, 1.5 * voxel,
    o3d.pipelines.registration.TransformationEstimationPointToPoint(False), 3,
    [o3d.pipelines.registration.CorrespondenceCheckerBasedOnEdgeLength(0.9),
     o3d.pipelines.registration.CorrespondenceCheckerBasedOnDistance(1.5 * voxel)],
    o3d.pipelines.registration.RANSACConvergenceCriteria(100000, 0.999))
fixed.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(12))
result = o3d.pipelines.registration.registration_icp(
    moving, fixed, 5.0, coarse.transformation, o3d.pipelines.registration.TransformationEstimationPointToPlane(),
    o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=100))
out["identity_global_fpfh_ransac_icp"] = {"time_s": time.perf_counter() - t0,
                                          "matrix": np.asarray(result.transformation).tolist()}
print(json.dumps(out))
"""


def vtk_icp(fixed, moving, start, max_points=5000):
    """vtkIterativeClosestPointTransform (rigid) of moving -> fixed, from ``start``; returns (matrix, seconds)."""

    def polydata(points):
        vpoints = vtk.vtkPoints()
        for p in points:
            vpoints.InsertNextPoint(*p)
        poly = vtk.vtkPolyData()
        poly.SetPoints(vpoints)
        verts = vtk.vtkVertexGlyphFilter()
        verts.SetInputData(poly)
        verts.Update()
        return verts.GetOutput()

    moved = moving @ start[:3, :3].T + start[:3, 3]
    source, target = polydata(moved), polydata(fixed)
    t0 = time.perf_counter()
    icp_transform = vtk.vtkIterativeClosestPointTransform()
    icp_transform.SetSource(source)
    icp_transform.SetTarget(target)
    icp_transform.GetLandmarkTransform().SetModeToRigidBody()
    icp_transform.SetMaximumNumberOfIterations(100)
    icp_transform.SetMaximumNumberOfLandmarks(max_points)
    icp_transform.CheckMeanDistanceOn()
    icp_transform.SetMaximumMeanDistance(1e-4)
    icp_transform.Update()
    elapsed = time.perf_counter() - t0
    matrix = np.array([[icp_transform.GetMatrix().GetElement(i, j) for j in range(4)] for i in range(4)])
    return matrix @ start, elapsed


def summarise(matrix, seconds, truth, moving, result=None):
    """Time, rotation error and mean displacement error against the scanner poses (and MedAI's own flags)."""
    rotation, translation = pose_errors(np.asarray(matrix), truth, moving)
    out = {
        "time_s": round(seconds, 3),
        "rotation_error_deg": round(rotation, 3),
        "translation_error_mm": round(translation, 3),
    }
    if result is not None:
        out.update(
            {
                "converged": result.converged,
                "reliable": result.reliable,
                "trim_fraction": round(result.trim_fraction, 3),
                "inlier_fraction": round(result.inlier_fraction, 3),
                "rms_mm": round(result.rms_mm, 3),
            }
        )
    return out


def main() -> None:
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    fixed, moving, truth = bunny_pair(data_dir)
    perturb = np.eye(4)
    perturb[:3, :3] = Rotation.from_rotvec(np.deg2rad(10.0) * np.array([0.6, 0.8, 0.0])).as_matrix()
    perturb[:3, 3] = [3.0, -4.0, 0.0]
    start = perturb @ truth
    out = {"data": "bun090 -> bun000 (mm)", "fixed_points": len(fixed), "moving_points": len(moving)}
    for name, options in (
        ("medai_from_identity", {}),
        ("medai_previous_default_from_identity", {"multi_start": "axes", "trim_fraction": 0.9}),
    ):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MedAIWarning)
            ours = icp(fixed, moving, **options)
        out[name] = summarise(ours.matrix, time.perf_counter() - t0, truth, moving, ours)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        ours = icp(fixed, moving, initial=start)
        times.append(time.perf_counter() - t0)
    out["medai_from_common_start"] = summarise(ours.matrix, float(np.median(times)), truth, moving, ours)
    for name, init in (("identity", np.eye(4)), ("common_start", start)):
        runs = [vtk_icp(fixed, moving, init) for _ in range(REPEATS if name == "common_start" else 1)]
        out[f"vtk_from_{name}"] = summarise(runs[-1][0], float(np.median([r[1] for r in runs])), truth, moving)
    python = os.environ.get("OPEN3D_PYTHON", "/tmp/venv-reg/bin/python")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clouds.npz"
        np.savez(path, fixed=fixed, moving=moving, start=start)
        try:
            run = subprocess.run(
                [python, "-c", OPEN3D_SCRIPT, str(path), str(REPEATS)], capture_output=True, text=True, check=True
            )
            results = json.loads(run.stdout.strip().splitlines()[-1])
            for key, value in results.items():
                label = key.replace("identity", "from_identity", 1).replace("start", "from_common_start", 1)
                out[f"open3d_{label}"] = summarise(value["matrix"], value["time_s"], truth, moving)
        except (OSError, subprocess.CalledProcessError, ValueError) as error:
            out["open3d"] = f"not run: {error}"
    base = out["medai_from_common_start"]["time_s"]
    out["time_ratio_vs_medai_common_start"] = {
        k: round(v["time_s"] / base, 2) for k, v in out.items() if isinstance(v, dict) and "common_start" in k
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
