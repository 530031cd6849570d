"""Benchmark: MedAI sliding-window inference vs plain ``monai.inferers.sliding_window_inference``.

Same network (MONAI ``UNet``, 3 levels, fixed seed 0, 3 classes, random weights: the point is
speed and blending, not accuracy), same volume (``example_ct_sm.nii.gz``, HU windowed to [0, 1],
channel first, i/j/k order) and the same ROI (64^3). MONAI runs with its defaults (overlap 0.25,
``sw_batch_size=1``, constant blending); MedAI with overlap 0.25, batch 4, Gaussian blending,
AMP on CUDA, and returns uint8 labels. Reported: best-of-``--repeat`` times, ratio, and the
fraction of voxels whose argmax label agrees (and the same for MedAI in constant mode, which
should be 1.0).

Run: ``python bench/bench_inference.py [--device cpu|cuda] [--repeat 3]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference as monai_swi
from monai.networks.nets import UNet

from MedAISegLib.sliding_window import sliding_window_inference

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"


def best_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--roi", type=int, default=64)
    args = parser.parse_args()
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
    t_monai, labels_monai = best_time(run_monai, args.repeat)
    t_medai, labels_medai = best_time(run_medai, args.repeat)
    labels_constant = run_medai("constant")
    print(json.dumps({
        "data": DATA.name, "shape_ijk": list(image.shape[1:]), "roi": list(roi), "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "monai_defaults_s": round(t_monai, 4), "medai_s": round(t_medai, 4),
        "speedup_medai_vs_monai": round(t_monai / t_medai, 3),
        "label_agreement_gaussian_vs_monai": float((labels_medai == labels_monai).mean()),
        "label_agreement_constant_vs_monai": float((labels_constant == labels_monai).mean()),
    }))


if __name__ == "__main__":
    main()
