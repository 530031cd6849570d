"""A 512×512×600 CT segments on a 24 GiB machine without a GPU (issue 8): peak memory of MedAI vs plain MONAI.

Both sides segment the same synthetic 512×512×600 CT (0.8×0.8×1.0 mm, int16 HU) with the same
SegResNet (TorchScript, fixed seed) whose card asks for 2 mm spacing and a 96³ ROI, on the CPU:

* ``medai``: ``MedAISegLogic.segment_with_model`` on a volume node (card path: resample, sliding window
  with Gaussian blending, uint8 argmax, labels mapped back to the CT grid, segmentation node);
* ``monai``: the plain recipe — float32 tensor of the CT, ``torch.nn.functional.interpolate`` to the
  model grid, ``monai.inferers.sliding_window_inference`` with its defaults, logits interpolated back
  to the CT grid, argmax.

Each side runs in its own child process; the peak resident memory (``ru_maxrss``) and wall time are
reported with their ratios and the label agreement on the CT grid. Usage:
``python bench/bench_large_ct.py [--shape 600,512,512] [--spacing-model 2.0] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (0.8, 0.8, 1.0)  # mm, i j k


def make_ct(shape_kji) -> np.ndarray:
    """Water cylinder with a denser 'organ' sphere and a bone rod, in HU (int16)."""
    k, j, i = np.ogrid[: shape_kji[0], : shape_kji[1], : shape_kji[2]]
    x, y, z = (
        (i - shape_kji[2] / 2) * SPACING[0],
        (j - shape_kji[1] / 2) * SPACING[1],
        (k - shape_kji[0] / 2) * SPACING[2],
    )
    ct = np.full(shape_kji, -1000, np.int16)
    ct[np.broadcast_to(x**2 + y**2 < 180.0**2, shape_kji)] = 0
    ct[(x - 40) ** 2 + (y + 20) ** 2 + z**2 < 60.0**2] = 60
    ct[np.broadcast_to((x + 60) ** 2 + (y - 90) ** 2 < 12.0**2, shape_kji)] = 900
    return ct


def make_model(folder: Path, spacing_mm: float) -> Path:
    """A seeded SegResNet (for realistic activation memory and time) plus an intensity classifier that
    makes the labels meaningful (air/water, organ at ~60 HU, bone), as TorchScript with its model card."""
    import torch
    from monai.networks.nets import SegResNet

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8)

        def forward(self, x):
            hu = x * 2000.0 - 1000.0  # the card's window maps -1000..1000 HU to 0..1
            intensity = torch.cat(
                [-(((hu - 0.0) / 20.0) ** 2), -(((hu - 60.0) / 20.0) ** 2), -(((hu - 900.0) / 200.0) ** 2)], dim=1
            )
            return intensity + 0.01 * self.backbone(x)

    torch.manual_seed(0)
    net = Net().eval()
    path = folder / "segresnet.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    card = {
        "name": "bench",
        "roi_size": [96, 96, 96],
        "spacing_mm": [spacing_mm] * 3,
        "overlap": 0.25,
        "normalization": {"type": "window", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1, "clip": True},
        "labels": [{"value": 1, "name": "a"}, {"value": 2, "name": "b"}],
    }
    (folder / "segresnet.ts.json").write_text(json.dumps(card))
    return path


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_medai(ct_path: Path, model: Path, out: Path) -> dict:
    from MedAICommonLib import bridge
    from MedAICommonLib.runtime import create_runtime
    from MedAISegLib.logic import MedAISegLogic

    scene = create_runtime().scene
    node = bridge.load_volume(scene, ct_path)
    start = time.perf_counter()
    seg = MedAISegLogic(scene).segment_with_model([node], model, device="cpu", batch_size=1)
    elapsed = time.perf_counter() - start
    labels, _geometry, _infos = bridge.labelmap_from_segmentation(seg, bridge.volume_geometry(node))
    np.save(out, labels.astype(np.uint8))
    return {"time_s": elapsed, "peak_rss_gib": peak_gib()}


def run_monai(ct_path: Path, model: Path, out: Path, spacing_mm: float) -> dict:
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    start = time.perf_counter()
    net = torch.jit.load(str(model), map_location="cpu").eval()
    x = torch.from_numpy(ct.astype(np.float32))[None, None]
    x = (x.clamp(-1000, 1000) + 1000) / 2000
    size = [max(1, round(n * s / spacing_mm)) for n, s in zip(ct.shape, SPACING[::-1])]
    x = torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)
    with torch.no_grad():
        logits = sliding_window_inference(x, (96, 96, 96), 1, net)
        logits = torch.nn.functional.interpolate(logits, size=ct.shape, mode="trilinear", align_corners=False)
        labels = logits.argmax(1)[0].numpy().astype(np.uint8)
    elapsed = time.perf_counter() - start
    np.save(out, labels)
    return {"time_s": elapsed, "peak_rss_gib": peak_gib()}


def child(side: str, folder: Path, spacing_mm: float, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    runner = run_medai if side == "medai" else (lambda c, m, o: run_monai(c, m, o, spacing_mm))
    print(json.dumps(runner(folder / "ct.nrrd", folder / "segresnet.ts", folder / f"{side}.npy")), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="600,512,512", help="k,j,i voxels")
    parser.add_argument("--spacing-model", type=float, default=2.0, help="the model card's spacing (mm)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["medai", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder), args.spacing_model, args.threads)
        return
    import SimpleITK as sitk

    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = sitk.GetImageFromArray(make_ct(shape))
        image.SetSpacing(SPACING)
        sitk.WriteImage(image, str(folder / "ct.nrrd"))
        make_model(folder, args.spacing_model)
        results = {}
        for side in ("medai", "monai"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    side,
                    "--folder",
                    tmp,
                    "--threads",
                    str(args.threads),
                    "--spacing-model",
                    str(args.spacing_model),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
            results[side] = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-3:]}
        agreement = None
        if (folder / "medai.npy").exists() and (folder / "monai.npy").exists():
            agreement = float((np.load(folder / "medai.npy") == np.load(folder / "monai.npy")).mean())
    summary = {
        "benchmark": "large_ct_segmentation",
        "shape_kji": shape,
        "voxels": int(np.prod(shape)),
        "model_spacing_mm": args.spacing_model,
        "threads": args.threads,
        **results,
        "label_agreement": agreement,
    }
    if "peak_rss_gib" in results.get("medai", {}) and "peak_rss_gib" in results.get("monai", {}):
        summary["peak_memory_ratio_monai_over_medai"] = (
            results["monai"]["peak_rss_gib"] / results["medai"]["peak_rss_gib"]
        )
        summary["time_ratio_monai_over_medai"] = results["monai"]["time_s"] / results["medai"]["time_s"]
        summary["fits_24_gib"] = results["medai"]["peak_rss_gib"] < 24.0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
