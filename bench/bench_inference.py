"""Benchmark: MedAI sliding-window inference vs ``monai.inferers.sliding_window_inference``, at equal settings.

Same network (MONAI ``UNet``, 3 levels, fixed seed 0, 3 classes, random weights: the point is speed and
blending, not accuracy), same volume (``example_ct_sm.nii.gz``, HU windowed to [0, 1], channel first, i/j/k
order), same ROI (64^3), device and torch threads; both sides end with the argmax label map on the host.

1. Equal settings (the fair comparison): for each (``sw_batch_size``, blending) in ``--equal`` (default
   ``1:constant`` = MONAI's defaults and ``4:gaussian`` = MedAI's), both run with that batch and blending,
   overlap 0.25, Gaussian sigma 0.125 x ROI, zero padding, float32 (no AMP on either side). Ratio
   ``monai / medai`` of the median wall time, and the fraction of voxels whose label agrees.
2. What MedAI adds on top, reported apart: MedAI with its own defaults (batch 4, Gaussian, AMP on CUDA)
   against MONAI with its defaults (batch 1, constant, float32).

Best and median of ``--repeat`` interleaved runs (wall and process CPU time).
Run: ``python bench/bench_inference.py [--device cpu|cuda] [--repeat 3] [--threads N] [--equal 1:constant,4:gaussian]``;
prints one JSON object.
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

from MedAISegLib.inference.sliding_window import sliding_window_inference

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"


def timed(fn):
    """(wall s, process CPU s, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _stats(times: dict) -> dict:
    return {
        f"{kind}_{stat}_s": round(fn(values), 4)
        for kind, values in times.items()
        for stat, fn in (("best", min), ("median", statistics.median))
    }


def compare(sides: dict, repeat: int) -> dict:
    """Interleaved timing of ``{name: fn}`` (each returns labels): per side best/median wall and CPU, labels."""
    times = {name: {"wall": [], "cpu": []} for name in sides}
    labels = {}
    for fn in sides.values():
        fn()  # warm-up
    for _ in range(repeat):  # interleaved: both sides see the same machine load
        for name, fn in sides.items():
            wall, cpu, labels[name] = timed(fn)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    out = {name: _stats(t) for name, t in times.items()}
    a, b = sides
    out["ratio_wall_median_" + f"{a}_over_{b}"] = round(out[a]["wall_median_s"] / out[b]["wall_median_s"], 3)
    out["ratio_cpu_median_" + f"{a}_over_{b}"] = round(out[a]["cpu_median_s"] / out[b]["cpu_median_s"], 3)
    out["label_agreement"] = float((labels[a] == labels[b]).mean())
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--equal", default="1:constant,4:gaussian", help="batch:blending pairs run by both sides")
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

    def monai(batch, mode):
        def run():
            with torch.no_grad():
                logits = monai_swi(
                    x[None].to(device),
                    roi,
                    batch,
                    net,
                    overlap=0.25,
                    mode=mode,
                    sigma_scale=0.125,
                    padding_mode="constant",
                    cval=0.0,
                )
            return torch.argmax(logits[0], 0).to(torch.uint8).cpu().numpy()

        return run

    def medai(batch, mode, amp):
        return lambda: (
            sliding_window_inference(
                net, x, roi, overlap=0.25, batch_size=batch, device=device, mode=mode, sigma_scale=0.125, amp=amp
            ).labels
        )

    equal = {}
    for pair in args.equal.split(","):
        batch, mode = pair.split(":")
        equal[f"batch{batch}_{mode}"] = compare(
            {"monai": monai(int(batch), mode), "medai": medai(int(batch), mode, False)}, args.repeat
        )
    defaults = compare(
        {"monai_defaults": monai(1, "constant"), "medai_defaults": medai(4, "gaussian", True)}, args.repeat
    )
    print(
        json.dumps(
            {
                "benchmark": "bench_inference",
                "data": DATA.name,
                "shape_ijk": list(image.shape[1:]),
                "roi": list(roi),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "repeat": args.repeat,
                "overlap": 0.25,
                "equal_settings": equal,
                "medai_defaults_vs_monai_defaults": {
                    "monai": "batch 1, constant, float32",
                    "medai": "batch 4, gaussian, AMP on CUDA",
                    **defaults,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
