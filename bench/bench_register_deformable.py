"""Deformable registration: MedAI's torch B-spline FFD vs SimpleITK's B-spline (both after their own affine MI stage).

Data: the 'ch2' T1 head shrunk to 3 mm (60x72x60), deformed by a known smooth field (6 mm amplitude, 120 mm
wavelength) and moved rigidly (4/-3/6 degrees, 6/-8/5 mm) — ``simulation.deformed_copy``. Both sides: Mattes MI,
32 bins, the same final control-point mesh; SimpleITK = ``intensity_registration.register_images(...,
"bspline")`` (affine, then B-spline by LBFGSB, shrink 2/1); MedAI = numba affine + ``torch_bspline`` (shrink
4/2/1, mesh refined per level, bending energy). Prints one JSON object: wall and process CPU time, the final MI
(computed the same way for both on the resampled images), and the error against the known fixed -> moving map
over head voxels (mean / 95th percentile / max), plus the affine-only error for reference.

Usage: ``python bench/bench_register_deformable.py [DATA_DIR] [--device cpu|cuda]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedAICommonLib.geometry import Geometry
from MedAIRegisterLib import quality, simulation
from MedAIRegisterLib.intensity import intensity_registration, torch_bspline
from MedAIRegisterLib.intensity.numba_registration import register_numba


def case(data_dir: Path):
    """(fixed, moving, truth(points), evaluation points) of the deformed, moved ch2 head."""
    image = sitk.Cast(
        sitk.Shrink(sitk.ReadImage(str(data_dir / "registration" / "ants-templates" / "ants_ch2.nii.gz")), [3, 3, 3]),
        sitk.sitkFloat32,
    )
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    moving, truth = simulation.deformed_copy(image, simulation.SmoothDeformation(centre, 6.0, 120.0))
    body = image > float(np.percentile(sitk.GetArrayViewFromImage(image), 50))
    return image, moving, truth, simulation.grid_points(image, 2, body)


def evaluate(transform, fixed, moving, truth_points, points) -> dict:
    """Error vs the known map (mm) and MI of the resampled moving image."""
    mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])
    error = np.linalg.norm(mapped - truth_points, axis=1)
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    return {
        "error_mean_mm": round(float(error.mean()), 3),
        "error_p95_mm": round(float(np.percentile(error, 95)), 3),
        "error_max_mm": round(float(error.max()), 3),
        "mi_after": round(float(quality.mutual_information(sitk.GetArrayFromImage(fixed), resampled)), 4),
    }


def main() -> None:
    argv = sys.argv[1:]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    positional = [
        a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or not argv[i - 1].startswith("--"))
    ]
    data_dir = Path(positional[0]) if positional else Path(__file__).resolve().parents[2] / "shared" / "data"
    fixed, moving, truth, points = case(data_dir)
    truth_points = truth(points)
    arrays = (
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
    )
    register_numba(*arrays, "affine", iterations=2)  # warm-up (numba cache load, torch imports)
    torch_bspline.register_bspline(*arrays, None, iterations=2, device=device)
    out = {"data": "ch2 T1 3 mm, smooth field 6 mm / 120 mm + rigid 4/-3/6 deg, 6/-8/5 mm", "device": device}

    wall, cpu = time.perf_counter(), time.process_time()
    affine = register_numba(*arrays, "affine", bins=32, sampling_percentage=0.2)
    result = torch_bspline.register_bspline(*arrays, affine.matrix_lps, device=device, bins=32)
    medai = {
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "mesh": list(result.grid.mesh_size),
    }
    medai.update(evaluate(result.sitk_transform(), fixed, moving, truth_points, points))
    medai["affine_only"] = evaluate(affine.sitk_transform(), fixed, moving, truth_points, points)
    out["medai_torch_bspline"] = medai

    physical = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh_mm = float(np.mean(physical / np.array(result.grid.mesh_size)))
    wall, cpu = time.perf_counter(), time.process_time()
    reference = intensity_registration.register_images(
        fixed,
        moving,
        "bspline",
        metric="mattes",
        bins=32,
        sampling_percentage=0.2,
        shrink_factors=(4, 2, 1),
        smoothing_sigmas_mm=(4.0, 2.0, 0.0),
        bspline_mesh_mm=mesh_mm,
    )
    simpleitk = {
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "mesh_mm": round(mesh_mm, 1),
    }
    simpleitk.update(evaluate(reference.transform, fixed, moving, truth_points, points))
    out["simpleitk_bspline"] = simpleitk
    out["time_ratio_simpleitk_over_medai_wall"] = round(simpleitk["wall_s"] / medai["wall_s"], 2)
    out["time_ratio_simpleitk_over_medai_cpu"] = round(simpleitk["cpu_s"] / medai["cpu_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
