"""Benchmark: MedAI 3D non-local means (torch) vs scikit-image ``denoise_nl_means(fast_mode=True)``.

Data: the TotalSegmentator example CT (``example_ct_sm.nii.gz``, 122x101x30, HU clipped to
[-1000, 1000] as the clean image) plus Gaussian noise (sigma 60 HU, seed 0). Both sides get the
same patch size (3) and search distance (2, i.e. 5^3 window), the true sigma, and each its own best
``h`` from the same grid (h = f * sigma, f in 0.3, 0.4, 0.5, 0.6, 0.8, 1.0), chosen by PSNR against the clean image;
the reported time is the best of ``--repeat`` runs at that h. PSNR uses the 2000 HU range.

Run: ``python bench/bench_nlm.py [--device cpu|cuda] [--repeat 3] [--threads 1]``; prints one JSON
object. ``--threads 1`` (default) gives torch the single core scikit-image's Cython loop uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.restoration import denoise_nl_means

from MedAISegLib.nonlocal_means import nonlocal_means

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"


def psnr(a, clean, data_range=2000.0):
    return float(10 * np.log10(data_range**2 / np.mean((a.astype(np.float64) - clean) ** 2)))


def best(run, clean, factors, sigma, repeat):
    results = []
    for f in factors:
        out = run(f * sigma)
        results.append((psnr(out, clean), f))
    score, f = max(results)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(f * sigma)
        times.append(time.perf_counter() - start)
    return {"psnr_db": round(score, 3), "h_factor": f, "time_s": round(min(times), 4)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--patch-radius", type=int, default=1)
    parser.add_argument("--search-radius", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the same single core scikit-image uses)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    clean = np.clip(sitk.GetArrayFromImage(sitk.ReadImage(str(DATA))).astype(np.float64), -1000, 1000)
    sigma = 60.0
    noisy = (clean + np.random.default_rng(0).normal(0, sigma, clean.shape)).astype(np.float32)
    p, s = args.patch_radius, args.search_radius
    factors = (0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    if args.device.startswith("cuda"):
        nonlocal_means(noisy, h=sigma, sigma=sigma, patch_radius=p, search_radius=s, device=args.device)  # warm-up
    ours = best(lambda h: nonlocal_means(noisy, h=h, sigma=sigma, patch_radius=p, search_radius=s,
                                         device=args.device), clean, factors, sigma, args.repeat)
    skimage = best(lambda h: denoise_nl_means(noisy, patch_size=2 * p + 1, patch_distance=s, h=h, sigma=sigma,
                                              fast_mode=True), clean, factors, sigma, args.repeat)
    print(json.dumps({
        "data": str(DATA.name), "shape_kji": list(clean.shape), "noise_sigma_hu": sigma,
        "patch_size": 2 * p + 1, "search_distance": s, "device": args.device, "torch_threads": torch.get_num_threads(),
        "noisy_psnr_db": round(psnr(noisy, clean), 3), "medai": ours, "skimage_fast": skimage,
        "medai_speedup_x": round(skimage["time_s"] / ours["time_s"], 3),
    }))


if __name__ == "__main__":
    main()
