"""Benchmark: MedAI 3D non-local means (numba on CPU, torch on GPU) vs scikit-image ``denoise_nl_means(fast_mode=True)``.

Data: the TotalSegmentator example CT (``example_ct_sm.nii.gz``, 30x101x122 KJI), HU clipped to
[-1000, 1000] as the clean image, plus Gaussian noise (sigma 60 HU, seed 0) as the one noisy input
all methods get. Every method gets the same patch size (3) and search distance (2, i.e. a 5^3
window) and the true sigma; each gets its own best ``h`` from the same grid (h = f * sigma,
f in 0.3 ... 1.0), chosen by PSNR against the clean image. PSNR is one function for all:
``10 log10(2000^2 / MSE)`` over the whole volume (2000 HU = the clipped range).

Methods: ``medai_blockwise`` (Coupe et al. 2008 blockwise NLM, block step 2, the default CPU path: the
fused numba kernel of ``nonlocal_means_numba``; on ``--device cuda`` the torch code), ``medai_blockwise_torch``
(the same definition in eager torch ops, as run on GPUs), ``medai_voxelwise`` (classic NLM, box-filter form,
numba kernel on CPU) and ``medai_voxelwise_torch`` (the same in torch), ``skimage_fast``.
Timing: after the h search, ``--repeat`` rounds; in each round every method runs once at its h,
interleaved so that load from other processes hits all sides alike. ``time_s`` is the best round,
``median_s`` the median; the speed-ups are given for both. ``cpu_s`` / ``median_cpu_s`` (process CPU time:
all threads of the process) show how many cores each side really used: scikit-image's Cython loop runs on one
core, so ``--threads 1`` (default: torch and numba on one thread) is the like-for-like comparison (on a loaded
machine the CPU-time ratio ``speedup_blockwise_cpu_time_x`` is the steadier figure); ``--threads 0`` gives torch
and numba all cores (scikit-image cannot use more than one).
Numba compiles its kernel once per machine (``cache=True``); ``numba_first_call_s`` is the first call of both
modes in this process (a compile when ``numba_cache_hits`` is 0, else loading the cached machine code); it is not part of the
timed rounds.

Run: ``python bench/bench_nlm.py [--device cpu|cuda] [--repeat 7] [--threads 1] [--block-step 2]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from skimage.restoration import denoise_nl_means

from MedAISegLib.preprocessing import nonlocal_means_numba
from MedAISegLib.preprocessing.nonlocal_means import nonlocal_means

DATA = Path(__file__).resolve().parents[2] / "shared/data/segmentation/totalsegmentator/example_ct_sm.nii.gz"
FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def psnr(a, clean, data_range=2000.0):
    return float(10 * np.log10(data_range**2 / np.mean((a.astype(np.float64) - clean) ** 2)))


def _arguments():
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--patch-radius", type=int, default=1)
    parser.add_argument("--search-radius", type=int, default=2)
    parser.add_argument("--block-step", default="2", help="blockwise sub-grid step: one int or k,j,i (e.g. 2,2,1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and numba CPU threads (default 1: the single core scikit-image uses; 0: all cores)",
    )
    return parser.parse_args()


def _timed_rounds(methods: dict, results: dict, sigma: float, repeat: int, cuda: bool) -> None:
    """``repeat`` interleaved rounds of every method at its h (``h_factor * sigma``); adds the best and median wall
    and CPU times to its ``results`` entry."""
    import torch

    for _ in range(repeat):
        for name, run in methods.items():
            h = results[name]["h_factor"] * sigma
            wall, cpu = time.perf_counter(), time.process_time()
            run(h)
            if cuda:
                torch.cuda.synchronize()
            results[name]["rounds"].append((time.perf_counter() - wall, time.process_time() - cpu))
    for r in results.values():
        rounds = r.pop("rounds")
        best = min(rounds)
        r.update(
            time_s=round(best[0], 4),
            cpu_s=round(best[1], 4),
            median_s=round(statistics.median(t for t, _ in rounds), 4),
            median_cpu_s=round(statistics.median(c for _, c in rounds), 4),
        )


def _speedups(results: dict) -> dict:
    """MedAI's speed-ups over scikit-image (best and median, wall and CPU time) and the PSNR difference."""
    sk = results["skimage_fast"]
    ours, torch_ours = results["medai_blockwise"], results["medai_blockwise_torch"]
    return {
        "speedup_blockwise_x": round(sk["time_s"] / ours["time_s"], 2),
        "speedup_blockwise_median_x": round(sk["median_s"] / ours["median_s"], 2),
        "speedup_blockwise_cpu_time_x": round(sk["cpu_s"] / ours["cpu_s"], 2),
        "speedup_blockwise_median_cpu_time_x": round(sk["median_cpu_s"] / ours["median_cpu_s"], 2),
        "speedup_blockwise_torch_x": round(sk["time_s"] / torch_ours["time_s"], 2),
        "speedup_voxelwise_x": round(sk["time_s"] / results["medai_voxelwise"]["time_s"], 2),
        "speedup_voxelwise_cpu_time_x": round(sk["cpu_s"] / results["medai_voxelwise"]["cpu_s"], 2),
        "speedup_voxelwise_torch_x": round(sk["time_s"] / results["medai_voxelwise_torch"]["time_s"], 2),
        "psnr_blockwise_minus_skimage_db": round(ours["psnr_db"] - sk["psnr_db"], 3),
    }


def main():
    args = _arguments()
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    clean = np.clip(sitk.GetArrayFromImage(sitk.ReadImage(str(DATA))).astype(np.float64), -1000, 1000)
    sigma = 60.0
    noisy = (clean + np.random.default_rng(0).normal(0, sigma, clean.shape)).astype(np.float32)
    p, s = args.patch_radius, args.search_radius
    step = tuple(int(n) for n in args.block_step.split(","))
    step = step[0] if len(step) == 1 else step
    common = dict(sigma=sigma, patch_radius=p, search_radius=s, device=args.device)
    first = time.perf_counter()
    for mode in ("blockwise", "voxelwise"):  # numba: compile, or load the cached machine code
        nonlocal_means(
            noisy[:8, :16, :16],
            sigma=sigma,
            patch_radius=p,
            search_radius=s,
            mode=mode,
            block_step=step,
            device=args.device,
        )
    first = time.perf_counter() - first
    methods = {
        "medai_blockwise": lambda h: nonlocal_means(noisy, h=h, mode="blockwise", block_step=step, **common),
        "medai_blockwise_torch": lambda h: nonlocal_means(
            noisy, h=h, mode="blockwise", block_step=step, backend="torch", **common
        ),
        "medai_voxelwise": lambda h: nonlocal_means(noisy, h=h, **common),
        "medai_voxelwise_torch": lambda h: nonlocal_means(noisy, h=h, backend="torch", **common),
        "skimage_fast": lambda h: denoise_nl_means(
            noisy, patch_size=2 * p + 1, patch_distance=s, h=h, sigma=sigma, fast_mode=True
        ),
    }
    if args.device.startswith("cuda"):
        methods["medai_blockwise"](sigma)  # warm-up (CUDA context, kernels)
    results = {}
    for name, run in methods.items():
        score, f = max((psnr(run(f * sigma), clean), f) for f in FACTORS)
        results[name] = {"psnr_db": round(score, 3), "h_factor": f, "rounds": []}
    _timed_rounds(methods, results, sigma, args.repeat, args.device.startswith("cuda"))
    kernels = (nonlocal_means_numba.blockwise_planes, nonlocal_means_numba.voxelwise_planes)
    print(
        json.dumps(
            {
                "data": str(DATA.name),
                "shape_kji": list(clean.shape),
                "noise_sigma_hu": sigma,
                "patch_size": 2 * p + 1,
                "search_distance": s,
                "block_step": step,
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "repeat": args.repeat,
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "noisy_psnr_db": round(psnr(noisy, clean), 3),
                **results,
                "numba_first_call_s": round(first, 2),
                "numba_cache_hits": sum(sum(k.stats.cache_hits.values()) for k in kernels),
                **_speedups(results),
            }
        )
    )


if __name__ == "__main__":
    main()
