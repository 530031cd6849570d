"""Benchmark: MedAI sliding-window inference vs plain ``monai.inferers.sliding_window_inference``.

Same network (MONAI ``UNet``, 3 levels, fixed seed 0, 3 classes, random weights: the point is
speed and blending, not accuracy), same volume (``example_ct_sm.nii.gz``, HU windowed to [0, 1],
channel first, i/j/k order) and the same ROI (64^3). MONAI runs with its defaults (overlap 0.25,
``sw_batch_size=1``, constant blending); MedAI with overlap 0.25, batch 4, Gaussian blending,
AMP on CUDA, and returns uint8 labels. Reported: best and median of ``--repeat`` interleaved runs
(wall and process CPU time), the ratios, and the
fraction of voxels whose argmax label agrees (and the same for MedAI in constant mode, which
should be 1.0).

Run: ``python bench/bench_inference.py [--device cpu|cuda] [--repeat 3] [--threads N]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference as monai_swi
from monai.networks.nets import UNet

from MedAISegLib.sliding_window import sliding_window_inference

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"


def timed(fn):
    """(wall s, process CPU s, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).to(device).eval()
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA))).astype(np.float32)
    image = np.clip((ct + 200) / 500, 0, 1).transpose(2, 1, 0)[None]  # (1, I, J, K)
    roi = (args.roi,) * 3
    x = torch.as_tensor(image)

    def run_monai():
        with torch.no_grad():
            logits = monai_swi(x[None].to(device), roi, 1, net)
        return torch.argmax(logits[0], 0).to(torch.uint8).cpu().numpy()

    def run_medai(mode="gaussian"):
        return sliding_window_inference(net, x, roi, overlap=0.25, batch_size=4, device=device, mode=mode).labels

    run_monai(), run_medai()  # warm-up
    times = {"monai": {"wall": [], "cpu": []}, "medai": {"wall": [], "cpu": []}}
    labels = {}
    for _ in range(args.repeat):  # interleaved: both sides see the same machine load
        for name, fn in (("monai", run_monai), ("medai", run_medai)):
            wall, cpu, labels[name] = timed(fn)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    labels_constant = run_medai("constant")
    summary = {f"{name}_{kind}_{stat}_s": round(fn(values), 4) for name, kinds in times.items()
               for kind, values in kinds.items() for stat, fn in (("best", min), ("median", statistics.median))}
    print(json.dumps({
        "data": DATA.name, "shape_ijk": list(image.shape[1:]), "roi": list(roi), "device": str(device),
        "torch_threads": torch.get_num_threads(), "repeat": args.repeat, **summary,
        "speedup_wall_median": round(summary["monai_wall_median_s"] / summary["medai_wall_median_s"], 3),
        "speedup_cpu_median": round(summary["monai_cpu_median_s"] / summary["medai_cpu_median_s"], 3),
        "label_agreement_gaussian_vs_monai": float((labels["medai"] == labels["monai"]).mean()),
        "label_agreement_constant_vs_monai": float((labels_constant == labels["monai"]).mean()),
    }))


if __name__ == "__main__":
    main()
