"""Fixed start-up of every ``medai`` command: lazy command imports against the code before them.

A command's fixed start-up is the wall time of a fresh ``medai COMMAND --help`` process and of a fresh
``medai COMMAND`` call that fails input validation (a missing input file), for every registered command; the
target is 2 s each (issue 15). Both are timed, best of ``--repeats``, for this checkout and for the module
folders of ``--before REV`` (the commit before the command modules imported their heavy libraries lazily),
the two sides interleaved, same interpreter and machine. Each row also gives the process CPU time and peak RSS
(``os.wait4`` of the child), the exit code and the error line of the bad-input call. ``medai --help`` and a
process importing every command module are the last line's reference figures.

    python bench/bench_cli_startup.py [--repeats 3] [--before REV|none] [--commands NAME ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from MedAICommonLib.cli.registry import COMMANDS, command_modules

REPO = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")
BEFORE_REV = "ea335cc"  # last commit whose command modules imported torch, MONAI, numba, VTK... at their top
TARGET_S = 2.0
MISSING = "/nonexistent/medai-bench"

#: command -> arguments that parse but name a missing input (None: the command reads no input file).
BAD_INPUT: dict[str, list[str] | None] = {
    "info": None,
    "demo": ["--output", f"{__file__}/demo"],  # an output folder inside a file
    "convert": [f"{MISSING}/in.nrrd", "out.nrrd"],
    "dicom-import": [f"{MISSING}/series", "out.nrrd"],
    "denoise": [f"{MISSING}/ct.nrrd", "out.nrrd", "--method", "nlm"],
    "segment": [f"{MISSING}/ct.nrrd", "out.seg.nrrd", "--method", "otsu"],
    "evaluate": [f"{MISSING}/ref.seg.nrrd", f"{MISSING}/pred.seg.nrrd"],
    "lesions": [f"{MISSING}/lesions.seg.nrrd"],
    "explain": [f"{MISSING}/ct.nrrd", "--model", f"{MISSING}/model.ts", "--output", "saliency.nrrd"],
    "train": ["--images", f"{MISSING}/ct.nrrd", "--labels", f"{MISSING}/labels.nrrd", "--output", "bundle"],
    "fine-tune": [
        f"{MISSING}/ct.nrrd",
        f"{MISSING}/seg.seg.nrrd",
        "--model",
        f"{MISSING}/model.ts",
        "--output",
        "bundle",
    ],
    "export": [f"{MISSING}/bundle", "--sample", f"{MISSING}/ct.nrrd", "--fp16"],
    "register": [f"{MISSING}/fixed.nrrd", f"{MISSING}/moving.nrrd", "--output-transform", "t.h5"],
    "icp": [f"{MISSING}/fixed.vtk", f"{MISSING}/moving.vtk", "--output-transform", "t.h5"],
    "landmarks": [f"{MISSING}/fixed.mrk.json", f"{MISSING}/moving.mrk.json", "--output-transform", "t.h5"],
    "download-base-data": None,
    "dose": [f"{MISSING}/ct.nrrd", f"{MISSING}/seg.seg.nrrd", "--target", "PTV", "--output-dose", "dose.nrrd"],
    "plan": [
        f"{MISSING}/ct.nrrd",
        f"{MISSING}/seg.seg.nrrd",
        "--target",
        "PTV",
        "--prescription",
        "60",
        "--output-dose",
        "dose.nrrd",
    ],
    "dvh": [f"{MISSING}/dose.nrrd", f"{MISSING}/seg.seg.nrrd"],
    "gamma": [f"{MISSING}/ref.nrrd", f"{MISSING}/eval.nrrd"],
    "isodose": [f"{MISSING}/dose.nrrd", "isodose"],
    "rt-import": [f"{MISSING}/rtdose.dcm", "--output-dir", "rt"],
    "rt-export": ["rt", "--dose", f"{MISSING}/dose.nrrd"],
    "contour-qa": [f"{MISSING}/dose.nrrd", f"{MISSING}/ref.seg.nrrd", f"{MISSING}/cand.seg.nrrd"],
    "batch": [f"{MISSING}/cohort.csv", "--pipeline", "segmentation-cohort", "--output", "cohort"],
}


def run_process(argv: list[str], pythonpath: str | None, cwd: str) -> dict:
    """Wall and CPU seconds, peak RSS (MiB), exit code and last stderr line of one fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    return {
        "seconds": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024.0,
        "exit_code": proc.returncode,
        "stderr": lines[-1] if lines else "",
    }


def _best(runs: list[dict]) -> dict:
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "seconds": round(best["seconds"], 3),
        "cpu_s": round(best["cpu_s"], 3),
        "max_rss_mib": round(max(r["max_rss_mib"] for r in runs), 1),
        "exit_code": best["exit_code"],
        "stderr": best["stderr"][:200],
    }


def extract_before(rev: str, into: Path) -> str:
    """The module folders of ``rev`` (``git archive``) under ``into``; returns their PYTHONPATH."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, *MODULE_FOLDERS], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return os.pathsep.join(str(into / folder) for folder in MODULE_FOLDERS)


def measure(calls: dict[str, list[str]], sides: dict[str, str | None], repeats: int, cwd: str) -> dict:
    """``{call: {side: best}}``, the sides interleaved within each repeat."""
    runs: dict[str, dict[str, list[dict]]] = {c: {s: [] for s in sides} for c in calls}
    for _ in range(repeats):
        for call, argv in calls.items():
            for side, pythonpath in sides.items():
                runs[call][side].append(run_process(argv, pythonpath, cwd))
    return {call: {side: _best(r) for side, r in by_side.items()} for call, by_side in runs.items()}


def _calls(commands: list[str]) -> dict[str, list[str]]:
    medai = [sys.executable, "-m", "MedAICommonLib.cli"]
    calls = {"--help": [*medai, "--help"]}
    for name in commands:
        calls[f"{name} --help"] = [*medai, name, "--help"]
        if BAD_INPUT[name] is not None:
            calls[f"{name} bad-input"] = [*medai, name, *BAD_INPUT[name]]
    imports = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in command_modules())
    calls["import every command module"] = [sys.executable, "-c", imports]
    return calls


def _row(name: str, results: dict, before: bool) -> dict:
    row: dict = {"benchmark": "cli_startup", "command": name, "target_s": TARGET_S}
    for kind in ("help", "bad-input"):
        key = f"{name} {'--help' if kind == 'help' else 'bad-input'}"
        if key not in results:
            row[kind] = None
            continue
        row[kind] = results[key]["after"]
        if before:
            row[kind]["before"] = results[key]["before"]
            row[kind]["speedup"] = round(results[key]["before"]["seconds"] / results[key]["after"]["seconds"], 2)
    row["within_target"] = all(row[k] is None or row[k]["seconds"] < TARGET_S for k in ("help", "bad-input"))
    return row


def main() -> None:
    """Print one JSON line per command, then one summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=BEFORE_REV, help="git revision of the code before (none: skip)")
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sides: dict[str, str | None] = {"after": None}
        if args.before.lower() != "none":
            sides["before"] = extract_before(args.before, Path(tmp) / "before")
        work = Path(tmp) / "work"
        work.mkdir()
        results = measure(_calls(args.commands), sides, args.repeats, str(work))
    rows = [_row(name, results, "before" in sides) for name in args.commands]
    for row in rows:
        print(json.dumps(row), flush=True)
    worst = max((r[k] for r in rows for k in ("help", "bad-input") if r[k]), key=lambda r: r["seconds"])
    summary = {
        "benchmark": "cli_startup",
        "repeats": args.repeats,
        "before": args.before,
        "target_s": TARGET_S,
        "help": results["--help"],
        "all_modules": results["import every command module"]["after"],
        "slowest_s": worst["seconds"],
        "commands_within_target": sum(r["within_target"] for r in rows),
        "commands": len(rows),
    }
    if "before" in sides:
        befores = [r[k]["before"]["seconds"] for r in rows for k in ("help", "bad-input") if r[k]]
        summary["slowest_before_s"] = max(befores)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
