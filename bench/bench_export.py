"""Benchmark: fp16 TorchScript and ONNX (onnxruntime) exports against the fp32 bundle model.

Same preprocessed phantom volumes, same ROI, same MedAI sliding window (overlap 0.25, batch 4)
for every variant; torch and onnxruntime get the same number of threads. Without ``--bundle`` a
SegResNet is first trained for a few epochs on generated phantoms (so that label agreement is
measured on a model that actually segments). Prints one JSON object: times (best of
``--repeat``), speed relative to fp32 and label agreement (fraction of equal voxels) per export,
on the CPU and, when CUDA is present, on the GPU (fp16 there).

    python bench/bench_export.py --repeat 3 [--bundle BUNDLE_DIR] [--threads 2] [--cpu-fp16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from MedAISegLib.inference.export import export_compressed
from MedAISegLib.learning.phantom_cases import make_phantom_cases
from MedAISegLib.learning.training import TrainingConfig, preprocess_for_bundle, train_and_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle to export (default: train a small SegResNet first)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=48, help="sample phantom size (voxels per axis, 2 mm)")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument(
        "--cpu-fp16",
        action="store_true",
        help="also time fp16 TorchScript on the CPU (torch's CPU fp16 convolutions are very slow)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        bundle = args.bundle  # a given bundle must be trusted in the user's store
        training = None
        if bundle is None:  # the bundle trained here is trusted in a throw-away store, not in the user's
            os.environ.setdefault("MEDAI_TRUST_STORE", f"{tmp}/trusted_bundles.json")
            bundle = f"{tmp}/bundle"
            config = TrainingConfig(
                features=16, spacing_mm=(2, 2, 2), roi=(32, 32, 32), epochs=4, learning_rate=3e-3, val_fraction=0.25
            )
            result = train_and_export(make_phantom_cases(range(8), shape=(40, 40, 40)), bundle, config)
            training = {"best_val_dice": result.best_dice, "seconds": result.seconds}
        size = (args.size,) * 3
        samples = [
            preprocess_for_bundle(image, bundle)
            for image, _ in make_phantom_cases(range(900, 900 + args.samples), shape=size)
        ]
        out = {
            "samples": args.samples,
            "sample_shape": list(samples[0].shape[1:]),
            "threads": args.threads,
            "training": training,
            "cpu": export_compressed(
                bundle, samples, fp16=args.cpu_fp16, onnx=True, device="cpu", repeat=args.repeat, threads=args.threads
            ),
        }
        if torch.cuda.is_available():
            out["cuda"] = export_compressed(bundle, samples, fp16=True, onnx=False, device="cuda", repeat=args.repeat)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
