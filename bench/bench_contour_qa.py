"""Contour QA (issue 17): ``medai contour-qa`` on TotalSegmentator's two models of one CT, and MONAI's surface Dice.

Case: ``example_seg`` (reference, 41 labels) vs ``example_seg_fast`` (candidate, 40 labels) on ``example_ct_sm``
(122 x 101 x 30, 3 mm), on a MedAI plan of that CT (liver target, 3 beams at 0/120/240 degrees, 10 mm bixels, 6 mm
dose grid, 50 Gy mean). Bands: every reference label's mask smoothed (Gaussian, sigma 0.8 voxel) as its
"probability" map, cut at 0.25/0.5/0.75. MedAI's side is the command run in this process (its report's
``timings_s``: ``compare`` = the 40 matched structures' Dice, HD95, surface Dice and both DVHs, ``bands`` =
reading 41 probability maps and their 3 DVHs each). The peer is MONAI's ``compute_surface_dice`` (Nikolov et al.
2018, edges and Euclidean distance transforms on the real spacing, as MedAI) on the same 40 mask pairs at 2 and
3 mm; the surface Dice of both are compared. Prints one JSON object.

    python bench/bench_contour_qa.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "segmentation" / "totalsegmentator"


def make_dose(folder: Path) -> Path:
    """The plan's dose (Gy) on the CT grid, written as dose.nrrd."""
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import create_runtime
    from MedAIPlanLib.logic import MedAIPlanLogic

    scene = create_runtime().scene
    ct = bridge.load_volume(scene, DATA / "example_ct_sm.nii.gz")
    structures = bridge.load_segmentation(scene, DATA / "example_seg.nii.gz", segment_names={5: "liver"})
    dose = MedAIPlanLogic(scene).compute_dose(
        ct,
        structures,
        "liver",
        gantry_angles=[0, 120, 240],
        bixel_width_mm=10.0,
        prescription_gy=50.0,
        dose_grid_mm=6.0,
        device="cpu",
    )
    return bridge.save_node(dose, folder / "dose.nrrd")


def write_probabilities(folder: Path, names: dict) -> Path:
    """prob_<name>.nrrd per reference label: its mask smoothed over about one voxel."""
    import SimpleITK as sitk
    from scipy import ndimage

    image = sitk.ReadImage(str(DATA / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(image)
    out = folder / "prob"
    out.mkdir()
    for value in np.unique(labels[labels > 0]):
        smooth = np.clip(ndimage.gaussian_filter((labels == value).astype(np.float32), 0.8), 0.0, 1.0)
        volume = sitk.GetImageFromArray(smooth.astype(np.float32))
        volume.CopyInformation(image)
        sitk.WriteImage(volume, str(out / f"prob_{names[int(value)]}.nrrd"))
    return out


def monai_surface_dice(pairs, spacing_kji, tolerances) -> tuple[dict, float]:
    """MONAI's surface Dice per pair and tolerance, and its time (s)."""
    import torch
    from monai.metrics import compute_surface_dice

    out, start = {}, time.perf_counter()
    for name, (a, b) in pairs.items():
        pred = torch.from_numpy(np.stack([~b, b])[None].astype(np.float32))
        ref = torch.from_numpy(np.stack([~a, a])[None].astype(np.float32))
        out[name] = [float(compute_surface_dice(pred, ref, [t], spacing=list(spacing_kji))[0, 0]) for t in tolerances]
    return out, time.perf_counter() - start


def main() -> dict:
    """Run both sides and return the JSON result."""
    import SimpleITK as sitk

    from MedAICommonLib.cli.main import main as medai
    from MedAIPlanLib.contour_qa.labels import KNOWN_LABEL_MAPS
    from MedAIPlanLib.contour_qa.surface import surface_dice

    names = KNOWN_LABEL_MAPS["totalsegmentator"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dose = make_dose(folder)
        probabilities = write_probabilities(folder, names)
        report = folder / "R.json"
        start, cpu = time.perf_counter(), time.process_time()
        code = medai(
            [
                "contour-qa",
                str(dose),
                str(DATA / "example_seg.nii.gz"),
                str(DATA / "example_seg_fast.nii.gz"),
                "--label-names",
                "totalsegmentator",
                "--plan-target",
                "liver",
                "--prescription",
                "50",
                "--probabilities",
                str(probabilities),
                "--table",
                str(folder / "T.csv"),
                "--report",
                str(report),
            ]
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if code:
            raise SystemExit(f"medai contour-qa failed with exit code {code}")
        data = json.loads(report.read_text())
    image = sitk.ReadImage(str(DATA / "example_seg.nii.gz"))
    ref = sitk.GetArrayFromImage(image)
    cand = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "example_seg_fast.nii.gz")))
    by_name = {v: k for k, v in names.items()}
    rows = data["metrics"]["structures"]
    pairs = {n: (ref == by_name[n], cand == by_name[n]) for n in rows}
    spacing = image.GetSpacing()
    tolerances = (2.0, 3.0)
    peer, peer_s = monai_surface_dice(pairs, spacing[::-1], tolerances)
    start = time.perf_counter()
    ours = {n: [surface_dice(b, a, spacing, t) for t in tolerances] for n, (a, b) in pairs.items()}
    ours_s = time.perf_counter() - start
    diff = np.abs(np.array([ours[n] for n in pairs]) - np.array([peer[n] for n in pairs]))
    timings = data["timings_s"]
    return {
        "benchmark": "contour_qa",
        "structures": len(rows),
        "medai_compare_s": timings["compare"],
        "medai_bands_s": timings["bands"],
        "medai_command_in_process_s": round(wall, 3),
        "medai_command_cpu_s": round(cpu, 3),
        "load_average": round(os.getloadavg()[0], 1),
        "medai_surface_dice_s": round(ours_s, 3),
        "monai_surface_dice_s": round(peer_s, 3),
        "surface_dice_ratio_monai_over_medai": round(peer_s / ours_s, 2),
        "surface_dice_max_abs_diff_2mm": float(diff[:, 0].max()),
        "surface_dice_max_abs_diff_3mm": float(diff[:, 1].max()),
        "mean_dice_reference_labels": data["metrics"]["mean_dice_reference"],
        "dose_relevant": data["metrics"]["dose_relevant"],
    }


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / m) for m in ("MedAICommon", "MedAISeg", "MedAIPlan")]
    print(json.dumps(main()))
