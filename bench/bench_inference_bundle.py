"""Benchmark: a MONAI bundle run by its own inferer vs MedAI's sliding-window path (same bundle).

One bundle (written to a temporary folder and trusted there): MONAI ``UNet`` (3 levels, seed 0,
3 classes, random weights: speed and agreement, not accuracy), preprocessing ``LoadImaged``,
``EnsureChannelFirstd``, ``Orientationd(RAS)``, ``ScaleIntensityRanged`` (-200..300 HU -> 0..1),
``SlidingWindowInferer`` (roi 64^3, ``sw_batch_size`` 4, overlap 0.25, constant blending),
postprocessing ``Activationsd(softmax)``, ``Invertd``, ``AsDiscreted(argmax)``. Both sides run
:func:`MedAISegLib.inference.bundle.run_bundle` on ``example_ct_sm.nii.gz``: ``inferer="bundle"`` (the
bundle's own inferer and postprocessing) and ``inferer="medai"`` (MedAI's sliding window with the
same roi/overlap/batch/blending, uint8 argmax, mapped back through the affine). Repeats are
interleaved; wall and process CPU times, best and median. Label agreement between the two sides
(1.0 expected up to float ties), and the MedAI path with flip TTA once. Both sides run float32
(``amp=False``); on CUDA, MedAI's default AMP is timed apart (``medai_amp_*``), as what MedAI adds on top.

Run: ``python bench/bench_inference_bundle.py [--device cpu|cuda] [--repeat 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"


def write_bundle(folder: Path) -> Path:
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 1,
    }
    config = {
        "network_def": network,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -200,
                    "a_max": 300,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 64], "sw_batch_size": 4, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(
        json.dumps(
            {
                "name": "bench unet",
                "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "a", "2": "b"}}}},
            }
        )
    )
    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDAI_TRUST_STORE"] = str(Path(tmp) / "trust.json")  # never the user's store
        from MedAISegLib.inference.bundle import run_bundle
        from MedAISegLib.inference.bundle_trust import record_trust

        bundle = write_bundle(Path(tmp) / "bundle")
        record_trust(bundle)
        image = sitk.ReadImage(str(DATA), sitk.sitkFloat32)
        sides = {"bundle": {}, "medai": {}}
        labels = {}
        for name in sides:  # warm-up
            labels[name] = run_bundle(bundle, [image], device=args.device, inferer=name, amp=False).labels
        for _ in range(args.repeat):
            for name, times in sides.items():
                wall, cpu = time.perf_counter(), time.process_time()
                labels[name] = run_bundle(bundle, [image], device=args.device, inferer=name, amp=False).labels
                times.setdefault("wall", []).append(time.perf_counter() - wall)
                times.setdefault("cpu", []).append(time.process_time() - cpu)
        start = time.perf_counter()
        tta = run_bundle(bundle, [image], device=args.device, inferer="medai", tta_flips=True, amp=False)
        t_tta = time.perf_counter() - start
        extra = {}
        if torch.device(args.device).type == "cuda":  # MedAI's default float16 autocast, beyond the equal settings
            start = time.perf_counter()
            amp = run_bundle(bundle, [image], device=args.device, inferer="medai", amp=True)
            extra = {
                "medai_amp_s": round(time.perf_counter() - start, 3),
                "label_agreement_medai_amp_vs_bundle": float((amp.labels == labels["bundle"]).mean()),
            }
    summary = {
        name: {
            f"{kind}_{stat}_s": round(fn(values), 4)
            for kind, values in times.items()
            for stat, fn in (("best", min), ("median", statistics.median))
        }
        for name, times in sides.items()
    }
    print(
        json.dumps(
            {
                "data": DATA.name,
                "size_xyz": list(image.GetSize()),
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "repeat": args.repeat,
                **summary,
                "speedup_wall_median": round(summary["bundle"]["wall_median_s"] / summary["medai"]["wall_median_s"], 3),
                "speedup_cpu_median": round(summary["bundle"]["cpu_median_s"] / summary["medai"]["cpu_median_s"], 3),
                "label_agreement_medai_vs_bundle": float((labels["medai"] == labels["bundle"]).mean()),
                "medai_tta_s": round(t_tta, 3),
                "label_agreement_tta_vs_bundle": float((tta.labels == labels["bundle"]).mean()),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
