"""GPU MI rigid (torch on CUDA) vs SimpleITK on the CPU: same data, pyramid and sampling as
``bench_mi_rigid.py``. Prints one JSON object; says so and exits 0 when no CUDA GPU is present.

Usage: ``python bench/bench_gpu_mi.py [DATA_DIR]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mi_rigid import run  # noqa: E402


def main() -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU on this machine"}))
        return
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    result = run(data_dir, "cuda", 10)
    result["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
