"""``medai batch`` on Dask against a shell loop of ``medai`` commands over the same generated cohort.

Both sides run the same three steps with the same settings on the same ``--cases`` phantom cases
(32^3 voxels, 2 mm): ``denoise --method curvature --iterations 3`` -> ``segment --method threshold
--lower 150`` -> ``evaluate`` against the phantom's label. The loop is a bash script that calls ``medai``
once per case-step, one after the other (what users do today); the batch is one ``medai batch
--workers N`` process (its cluster start-up included). Accuracy: the per-case Dice of both sides must
agree. Then the per-case cost of a model step (a MONAI UNet, 4.8 M parameters, as TorchScript with a
card) is measured inside ``medai batch``, with ``needs: [model]`` (the worker's model cache) and without.

    python bench/bench_batch.py [--cases 50] [--workers 2] [--skip-loop]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import yaml

STEPS = [
    {
        "name": "denoise",
        "command": "denoise",
        "args": ["{case.image}", "{out}/image.nrrd", "--method", "curvature", "--iterations", "3"],
    },
    {
        "name": "segment",
        "command": "segment",
        "args": ["{denoise}/image.nrrd", "{out}/seg.seg.nrrd", "--method", "threshold", "--lower", "150"],
    },
    {
        "name": "evaluate",
        "command": "evaluate",
        "args": ["{case.label}", "{segment}/seg.seg.nrrd", "--label-names", "1=threshold"],
    },
]
MEDAI = [sys.executable, "-m", "MedAICommonLib.cli"]


def _cohort(folder: Path, cases: int) -> Path:
    from MedAISegLib.learning.phantom_cases import write_phantom_cases

    images, labels = write_phantom_cases(folder / "data", range(cases))
    rows = ["id,image,label"] + [f"case{i:03d},{image},{label}" for i, (image, label) in enumerate(zip(images, labels))]
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def _loop(manifest: Path, out: Path) -> tuple[float, dict[str, float]]:
    """A bash loop of medai calls (the same args as the pipeline); seconds and Dice per case."""
    lines = ["set -e"]
    with manifest.open() as handle:
        cases = list(csv.DictReader(handle))
    medai = " ".join(MEDAI)
    for case in cases:
        folders = {name: out / case["id"] / name for name in ("denoise", "segment", "evaluate")}
        values = {
            "case.image": case["image"],
            "case.label": case["label"],
            **{name: str(path) for name, path in folders.items()},
        }
        for step in STEPS:
            folder = folders[step["name"]]
            args = [a.replace("{out}", str(folder)) for a in step["args"]]
            for key, value in values.items():
                args = [a.replace("{" + key + "}", value) for a in args]
            lines.append(f"mkdir -p {folder}")
            lines.append(f"{medai} {step['command']} {' '.join(args)} --report {folder}/report.json > /dev/null 2>&1")
    script = out / "loop.sh"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    subprocess.run(["bash", str(script)], check=True)
    seconds = time.perf_counter() - start
    dice = {
        c["id"]: json.loads((out / c["id"] / "evaluate" / "report.json").read_text())["metrics"]["mean_dice"]
        for c in cases
    }
    return seconds, dice


def _batch(manifest: Path, steps: list[dict], out: Path, workers: int) -> tuple[float, dict]:
    pipeline = out.parent / f"{out.name}.yaml"
    pipeline.write_text(yaml.safe_dump({"steps": steps}, sort_keys=False))
    start = time.perf_counter()
    subprocess.run(
        [
            *MEDAI,
            "batch",
            str(manifest),
            "--pipeline",
            str(pipeline),
            "--output",
            str(out),
            "--workers",
            str(workers),
            "--report",
            str(out / "batch.json"),
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, json.loads((out / "batch.json").read_text())


def _unet_model(folder: Path) -> Path:
    import torch
    from monai.networks.nets import UNet

    net = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    ).eval()
    path = folder / "unet.ts"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 32, 32, 32)), str(path))
    card = {
        "name": "unet (random weights)",
        "inputs": [{"name": "image"}],
        "roi_size": [32, 32, 32],
        "labels": [{"value": 1, "name": "lesion", "color": [1, 0, 0]}],
    }
    (folder / "unet.ts.json").write_text(json.dumps(card))
    return path


def _load_seconds(model: Path, repeats: int = 5) -> float:
    """Best-of time of one load of the model file in this process (what the cache saves per case)."""
    from MedAISegLib.inference.model_checks import load_torchscript_file

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_torchscript_file(model)
        times.append(time.perf_counter() - start)
    return round(min(times), 4)


def _segment_seconds(out: Path) -> list[float]:
    return [json.loads(p.read_text())["seconds"] for p in sorted(out.glob("*/segment/done.json"))]


def _model_cache(manifest: Path, folder: Path, workers: int) -> dict:
    model = _unet_model(folder)
    with_model = folder / "cohort_model.csv"
    lines = manifest.read_text().splitlines()
    with_model.write_text("\n".join([lines[0] + ",model", *(f"{line},{model}" for line in lines[1:])]) + "\n")
    step = {
        "name": "segment",
        "command": "segment",
        "args": ["{case.image}", "{out}/seg.seg.nrrd", "--model", "{case.model}", "--device", "cpu"],
    }
    result = {
        "model_parameters": 4_800_000,
        "model_mib": round(model.stat().st_size / 2**20, 1),
        "model_load_s": _load_seconds(model),
    }
    for label, needs in (("with_cache", {"needs": ["model"]}), ("without_cache", {})):
        seconds, report = _batch(with_model, [{**step, **needs}], folder / f"model_{label}", workers)
        per_case = _segment_seconds(folder / f"model_{label}")
        result[label] = {
            "batch_seconds": round(seconds, 2),
            "segment_step_median_s": round(median(per_case), 3),
            "segment_step_mean_s": round(sum(per_case) / len(per_case), 3),
            "cases_done": report["metrics"]["cases_done"],
        }
    result["per_case_saving_median_s"] = round(
        result["without_cache"]["segment_step_median_s"] - result["with_cache"]["segment_step_median_s"], 3
    )
    return result


def main() -> None:
    """Print one JSON object: both times, the ratio, the Dice agreement and the model-cache figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-loop", action="store_true", help="only the batch and the model-cache figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        manifest = _cohort(folder, args.cases)
        batch_s, report = _batch(manifest, STEPS, folder / "batch", args.workers)
        with (folder / "batch" / "cohort.csv").open() as handle:
            batch_dice = {r["id"]: float(r["evaluate.mean_dice"]) for r in csv.DictReader(handle)}
        result = {
            "benchmark": "batch",
            "cases": args.cases,
            "steps": [s["name"] for s in STEPS],
            "workers": args.workers,
            "batch_seconds": round(batch_s, 2),
            "batch_cases_done": report["metrics"]["cases_done"],
            "batch_per_case_s": round(batch_s / args.cases, 3),
        }
        if not args.skip_loop:
            loop_s, loop_dice = _loop(manifest, folder / "loop")
            result.update(
                {
                    "loop_seconds": round(loop_s, 2),
                    "loop_per_case_s": round(loop_s / args.cases, 3),
                    "ratio_loop_over_batch": round(loop_s / batch_s, 2),
                    "max_dice_difference": max(abs(batch_dice[k] - loop_dice[k]) for k in loop_dice),
                }
            )
        result["model_cache"] = _model_cache(manifest, folder, args.workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
