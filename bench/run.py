"""Run every ``bench/bench_*.py`` (or those named) and print their JSON results, one per line.

Each benchmark compares MedAI with the peer its issue names on the same data and settings and
prints one JSON object (times, ratios, accuracy). ``python bench/run.py [NAME ...] [--out FILE]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(names: list[str]) -> list[dict]:
    """Run the benchmarks and collect their last JSON line each."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    results = []
    for script in scripts:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
        if proc.returncode != 0 or not lines:
            results.append({"benchmark": script.stem, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]})
        else:
            results.append(json.loads(lines[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    out = None
    if "--out" in args:
        index = args.index("--out")
        out = args[index + 1]
        del args[index : index + 2]
    collected = run(args)
    if out:
        Path(out).write_text(json.dumps(collected, indent=2))
