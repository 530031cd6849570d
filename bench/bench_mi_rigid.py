"""MI rigid registration: MedAI's torch Parzen-MI path vs SimpleITK's Mattes MI, same data and sampling.

Data: the elastix lung CT (57x78x64, 2.7x2.7x5 mm) and the 'ch2' T1 head (shrunk to 3 mm), each moved by a
known rigid transform (~17-20 degrees, ~28-30 mm) with a non-monotonic intensity remapping. Both sides use
the same pyramid (shrink 4, 2; Gaussian sigma 4, 2 mm), 32 bins, 20 % random sampling and a geometry-centre
start; one-off torch start-up is excluded by a warm-up call. Prints one JSON object: times, ratio
(torch / SimpleITK), mean and max TRE over body voxels.

Usage: ``python bench/bench_mi_rigid.py [DATA_DIR] [--device cpu|cuda]``.
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
from MedAIRegisterLib import intensity_registration  # noqa: E402
from MedAIRegisterLib.torch_registration import register_torch  # noqa: E402

REPEATS = 5  # median time of 5 runs each (the machine is shared; single runs vary 2x)
SETTINGS = {"bins": 32, "sampling_percentage": 0.2, "shrink_factors": (4, 2), "smoothing_sigmas_mm": (4.0, 2.0)}


def run(data_dir: Path, device: str) -> dict:
    out = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in SETTINGS.items()}, "device": device}
    for kind in ("ct", "mr"):
        fixed, moving, truth, points = load_case(data_dir, kind)
        row = {}
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            reference = intensity_registration.register_images(fixed, moving, "rigid", metric="mattes", **SETTINGS)
            times.append(time.perf_counter() - t0)
        row["simpleitk_s"] = round(float(np.median(times)), 3)
        tre = intensity_registration.target_registration_error(reference.transform, truth, points)
        row["simpleitk_tre_mean_mm"], row["simpleitk_tre_max_mm"] = round(float(tre.mean()), 3), round(float(tre.max()), 3)
        # Warm-up (torch's lazy imports, CUDA context) so one-off start-up is not counted; SimpleITK's
        # equivalent (library load) happened at import.
        if kind == "ct":
            register_torch(sitk.GetArrayFromImage(fixed), Geometry.from_sitk(fixed), sitk.GetArrayFromImage(moving),
                           Geometry.from_sitk(moving), iterations=2, device=device)
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            ours = register_torch(sitk.GetArrayFromImage(fixed), Geometry.from_sitk(fixed),
                                  sitk.GetArrayFromImage(moving), Geometry.from_sitk(moving), "rigid", device=device,
                                  **SETTINGS)
            times.append(time.perf_counter() - t0)
        row["torch_s"] = round(float(np.median(times)), 3)
        tre = intensity_registration.target_registration_error(ours.sitk_transform(), truth, points)
        row["torch_tre_mean_mm"], row["torch_tre_max_mm"] = round(float(tre.mean()), 3), round(float(tre.max()), 3)
        row["time_ratio_torch_over_simpleitk"] = round(row["torch_s"] / row["simpleitk_s"], 2)
        out[kind] = row
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    args = [a for a in args if a != device]
    data_dir = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "data"
    print(json.dumps(run(data_dir, device), indent=1))


if __name__ == "__main__":
    main()
