"""MI rigid registration: MedAI's CPU path (fused numba MI kernel) and torch path vs SimpleITK's Mattes MI.

Data: the elastix lung CT (57x78x64, 2.7x2.7x5 mm) and the 'ch2' T1 head (shrunk to 3 mm), each moved by a
known rigid transform (~17-20 degrees, ~28-30 mm) with a non-monotonic intensity remapping. All sides use the
same pyramid (shrink 4, 2; Gaussian sigma 4, 2 mm), 32 bins, 20 % random sampling (seed = repeat number) and a
geometry-centre start (MedAI's paths use at most sqrt(samples) histogram bins per side at a level: 30 instead
of 32 on the CT's coarse level, 28 on the head's; SimpleITK keeps 32 throughout); one-off start-up (numba compilation/cache load, torch lazy imports) is excluded by a
warm-up call. Repeats are interleaved (SimpleITK, numba, torch, SimpleITK, ...) because the machine is shared.
Prints one JSON object: wall and process CPU times (median and best), ratios to SimpleITK, TRE over body
voxels (mean over repeats of the per-run mean, and the worst max).

Usage: ``python bench/bench_mi_rigid.py [DATA_DIR] [--device cpu|cuda] [--repeats N]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing" / "Python"))
from test_register_intensity import load_case  # noqa: E402

from MedAICommonLib.geometry import Geometry  # noqa: E402
from MedAIRegisterLib.intensity import intensity_registration  # noqa: E402
from MedAIRegisterLib.intensity.numba_registration import register_numba  # noqa: E402
from MedAIRegisterLib.intensity.torch_registration import register_torch  # noqa: E402

SETTINGS = {"bins": 32, "sampling_percentage": 0.2, "shrink_factors": (4, 2), "smoothing_sigmas_mm": (4.0, 2.0)}


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run(data_dir: Path, device: str, repeats: int) -> dict:
    out = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()},
        "device": device,
        "repeats": repeats,
    }
    for kind in ("ct", "mr"):
        fixed, moving, truth, points = load_case(data_dir, kind)
        arrays = (
            sitk.GetArrayFromImage(fixed),
            Geometry.from_sitk(fixed),
            sitk.GetArrayFromImage(moving),
            Geometry.from_sitk(moving),
            "rigid",
        )
        sides = {
            "simpleitk": lambda seed, f=fixed, m=moving: (
                intensity_registration.register_images(
                    f, m, "rigid", metric="mattes", seed=seed + 1, **SETTINGS
                ).transform
            ),
            "medai_cpu_numba": lambda seed, a=arrays: register_numba(*a, seed=seed, **SETTINGS).sitk_transform(),
            "medai_torch": lambda seed, a=arrays: register_torch(
                *a, device=device, seed=seed, **SETTINGS
            ).sitk_transform(),
        }
        register_numba(*arrays, iterations=2)  # warm-up
        register_torch(*arrays, iterations=2, device=device)
        records = {name: [] for name in sides}
        for seed in range(repeats):
            for name, side in sides.items():
                transform, wall, cpu = _timed(lambda side=side, seed=seed: side(seed))
                tre = intensity_registration.target_registration_error(transform, truth, points)
                records[name].append((wall, cpu, tre.mean(), tre.max()))
        row = {}
        for name, values in records.items():
            values = np.array(values)
            row[name] = {
                "wall_s_median": round(float(np.median(values[:, 0])), 3),
                "wall_s_best": round(float(values[:, 0].min()), 3),
                "cpu_s_median": round(float(np.median(values[:, 1])), 3),
                "cpu_s_best": round(float(values[:, 1].min()), 3),
                "tre_mean_mm": round(float(values[:, 2].mean()), 3),
                "tre_max_mm": round(float(values[:, 3].max()), 3),
            }
        for name in ("medai_cpu_numba", "medai_torch"):
            row[f"{name}_over_simpleitk_wall"] = round(
                row[name]["wall_s_median"] / row["simpleitk"]["wall_s_median"], 2
            )
            row[f"{name}_over_simpleitk_cpu"] = round(row[name]["cpu_s_median"] / row["simpleitk"]["cpu_s_median"], 2)
        out[kind] = row
    return out


def main() -> None:
    argv = sys.argv[1:]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 5
    positional = [
        a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or not argv[i - 1].startswith("--"))
    ]
    data_dir = Path(positional[0]) if positional else Path(__file__).resolve().parents[2] / "shared" / "data"
    print(json.dumps(run(data_dir, device, repeats), indent=1))


if __name__ == "__main__":
    main()
