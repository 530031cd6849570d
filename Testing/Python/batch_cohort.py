"""Generated cohorts and pipelines for the ``medai batch`` tests and benchmark.

Each case is a phantom image (an ellipsoid lesion over textured tissue, noise) and its label from
:mod:`MedAISegLib.learning.phantom_cases`; the manifest names them relative to its own folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import yaml

from MedAISegLib.learning.phantom_cases import write_phantom_cases

# denoise -> segment (threshold) -> evaluate against the phantom's label
SEGMENTATION_STEPS = [
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
# the scale pipeline: denoise -> segment -> plan -> dvh
PLANNING_STEPS = [
    SEGMENTATION_STEPS[0],
    SEGMENTATION_STEPS[1],
    {
        "name": "plan",
        "command": "plan",
        "args": [
            "{denoise}/image.nrrd",
            "{segment}/seg.seg.nrrd",
            "--target",
            "threshold",
            "--prescription",
            "60",
            "--fractions",
            "30",
            "--gantry-angles",
            "0,120,240",
            "--iterations",
            "30",
            "--output-dose",
            "{out}/dose.nrrd",
        ],
    },
    {
        "name": "dvh",
        "command": "dvh",
        "args": [
            "{plan}/dose.nrrd",
            "{segment}/seg.seg.nrrd",
            "--target",
            "threshold",
            "--prescription",
            "60",
            "--dvh-table",
            "{out}/dvh.csv",
        ],
    },
]


def write_cohort(folder, count: int, shape=(32, 32, 32)) -> Path:
    """Write ``count`` phantom cases and ``cohort.csv`` (id, image, label; relative paths) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = write_phantom_cases(folder / "data", range(count), shape=shape)
    lines = ["id,image,label"]
    lines += [
        f"case{index:03d},data/{Path(image).name},data/{Path(label).name}"
        for index, (image, label) in enumerate(zip(images, labels))
    ]
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_pipeline(path, steps) -> Path:
    """Write a pipeline YAML with ``steps`` to ``path``."""
    path = Path(path)
    path.write_text(yaml.safe_dump({"steps": steps}, sort_keys=False))
    return path


def done_log(output) -> list[dict]:
    """The entries of ``output/.medai-batch/done.log`` (one per case-step renamed into place)."""
    path = Path(output) / ".medai-batch" / "done.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_a_busy_worker(client, output, after: int, timeout: float = 120.0) -> int:
    """Once ``after`` case-steps are done, SIGKILL a worker process that is running a task; its pid.

    The pid comes from the worker itself (``client.run(os.getpid)``): this version of the scheduler's
    ``scheduler_info()`` lists no pid.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(done_log(output)) >= after:
            busy = [address for address, tasks in client.processing().items() if tasks]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no busy worker after {after} done steps within {timeout} s")


def write_threshold_model(folder, threshold: float = 150.0, gain: float = 0.05) -> Path:
    """A TorchScript model with its card: a 1x1x1 convolution whose class 1 (``lesion``) is ``x > threshold``."""
    import torch
    from test_seg_inference import threshold_net

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lesion.ts"
    torch.jit.save(torch.jit.script(threshold_net(threshold, gain)), str(path))
    card = {
        "name": "lesion threshold",
        "inputs": [{"name": "image", "modality": "CT"}],
        "roi_size": [32, 32, 32],
        "labels": [{"value": 1, "name": "lesion", "color": [1, 0, 0]}],
    }
    (folder / "lesion.ts.json").write_text(json.dumps(card))
    return path


def add_column(manifest, name: str, value: str) -> Path:
    """Append the column ``name`` with ``value`` on every case to the manifest (in place); returns it."""
    manifest = Path(manifest)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([f"{lines[0]},{name}", *(f"{line},{value}" for line in lines[1:])]) + "\n")
    return manifest


MODEL_STEPS = [
    SEGMENTATION_STEPS[0],
    {
        "name": "segment",
        "command": "segment",
        "needs": ["model"],
        "args": ["{denoise}/image.nrrd", "{out}/seg.seg.nrrd", "--model", "{case.model}", "--device", "cpu"],
    },
    {
        "name": "evaluate",
        "command": "evaluate",
        "args": ["{case.label}", "{segment}/seg.seg.nrrd", "--label-names", "1=lesion"],
    },
]
