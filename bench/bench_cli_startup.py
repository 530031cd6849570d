"""Start-up of the ``medai`` command: the lazy registry against importing every command module.

``medai --help`` and ``medai COMMAND --help`` (parsing only: the fixed cost a command pays before any
work) are timed as fresh processes, best of ``--repeats``, against the previous frame's cost: a process
that imports every command module, which is what ``medai --help`` and every command used to do.
Peak memory (max RSS) of each process is reported too. Same interpreter, same machine, same run.

    python bench/bench_cli_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from MedAICommonLib.cli.registry import COMMANDS, command_modules

_PEAK = "\nimport resource, sys\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"


def _run(code: str) -> tuple[float, float]:
    """Seconds and max RSS (MiB) of a fresh ``python -c code`` (the process reports its own peak)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + _PEAK], check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024.0


def _best(code: str, repeats: int) -> dict:
    runs = [_run(code) for _ in range(repeats)]
    return {"seconds": round(min(r[0] for r in runs), 3), "max_rss_mib": round(max(r[1] for r in runs), 1)}


def _medai(args: list[str]) -> str:
    return ("from MedAICommonLib.cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n")


def main() -> None:
    """Print one JSON object: every timing and the ratios against importing every command module."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    everything = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in command_modules())
    baseline = _best(everything, args.repeats)
    result = {"benchmark": "cli_startup", "peer": "import every command module (the previous frame)",
              "repeats": args.repeats, "all_modules": baseline, "help": _best(_medai(["--help"]), args.repeats),
              "commands": {}}
    for name in COMMANDS:
        result["commands"][name] = _best(_medai([name, "--help"]), args.repeats)
    result["help_speedup"] = round(baseline["seconds"] / result["help"]["seconds"], 2)
    slowest = max(result["commands"].items(), key=lambda item: item[1]["seconds"])
    result["slowest_command"] = {"name": slowest[0], **slowest[1],
                                 "speedup": round(baseline["seconds"] / slowest[1]["seconds"], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
