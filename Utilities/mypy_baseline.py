"""Type-check the ``*Lib`` packages with mypy against a recorded baseline that may only shrink.

    python Utilities/mypy_baseline.py                 # check: exit 1 if any file has more errors than recorded
    python Utilities/mypy_baseline.py --update        # record the current counts (only if none grew)
    python Utilities/mypy_baseline.py --update --allow-growth   # record them even if some grew

mypy runs with the ``[tool.mypy]`` settings of ``pyproject.toml`` on the four ``*Lib`` packages. Its errors are
counted per file and compared with ``Utilities/mypy-baseline.json``: a file whose count grew, or a file with
errors that the baseline does not list, fails the check and its errors are printed. Files that improved are
listed with a reminder to run ``--update`` so the baseline shrinks with them. ``--mypy-output FILE`` reads a
saved mypy output instead of running mypy (for a quick re-check, or to compare outputs of another run).

Exit codes: 0 the check passed (or the baseline was written), 1 some file grew (or ``--update`` refused),
2 mypy could not run or reported something other than type errors.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "Utilities" / "mypy-baseline.json"
PACKAGES = (
    "MedAICommon/MedAICommonLib",
    "MedAISeg/MedAISegLib",
    "MedAIRegister/MedAIRegisterLib",
    "MedAIPlan/MedAIPlanLib",
)
_ERROR = re.compile(r"^(?P<path>[^:\s][^:]*\.py):\d+(?::\d+)?: error: (?P<message>.*)$")


def run_mypy(packages: tuple[str, ...] = PACKAGES) -> tuple[str, str]:
    """Run mypy on ``packages`` (paths relative to the repository) and return (its output, its version).

    Raises RuntimeError when mypy is not installed or stops without type-checking (exit status 2).
    """
    try:
        version = subprocess.run(
            [sys.executable, "-m", "mypy", "--version"], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()[1]
    except (subprocess.CalledProcessError, IndexError) as error:
        raise RuntimeError(
            "mypy is not installed in this Python; install the test extra: pip install -e '.[test]'"
        ) from error
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", *packages],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(
            f"mypy stopped without checking (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout, version


def errors_by_file(output: str) -> dict[str, list[str]]:
    """The ``error:`` lines of a mypy output, grouped by file (POSIX paths relative to the repository)."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = _ERROR.match(line.strip())
        if match:
            path = Path(match["path"])
            if path.is_absolute() and path.is_relative_to(REPO):
                path = path.relative_to(REPO)
            found.setdefault(path.as_posix(), []).append(line.strip())
    return found


def compare(baseline: dict[str, int], current: dict[str, int]) -> tuple[dict, dict]:
    """Files whose error count grew, and files whose count shrank, as {file: (recorded, now)}."""
    grew = {f: (baseline.get(f, 0), n) for f, n in current.items() if n > baseline.get(f, 0)}
    shrank = {f: (n, current.get(f, 0)) for f, n in baseline.items() if current.get(f, 0) < n}
    return grew, shrank


def read_baseline(path: Path = BASELINE) -> dict:
    """The recorded baseline (``{"mypy": version, "total": N, "errors": {file: count}}``); empty if absent."""
    if not path.exists():
        return {"mypy": None, "total": 0, "errors": {}}
    return json.loads(path.read_text())


def write_baseline(counts: dict[str, int], version: str, path: Path = BASELINE) -> None:
    """Write the per-file counts (sorted, files without errors left out) with the mypy version."""
    errors = {f: counts[f] for f in sorted(counts) if counts[f] > 0}
    data = {"mypy": version, "packages": list(PACKAGES), "total": sum(errors.values()), "errors": errors}
    path.write_text(json.dumps(data, indent=1) + "\n")


def _report(grew: dict, shrank: dict, found: dict[str, list[str]]) -> None:
    for file, (before, now) in sorted(grew.items()):
        print(f"{file}: {now} mypy errors, baseline {before}")
        for line in found[file]:
            print(f"    {line}")
    if shrank:
        print(
            f"{len(shrank)} file(s) have fewer errors than recorded: "
            "run `python Utilities/mypy_baseline.py --update` to shrink the baseline"
        )
        for file, (before, now) in sorted(shrank.items()):
            print(f"    {file}: {before} -> {now}")


def main(argv: list[str] | None = None) -> int:
    """Check (or update) the baseline; the exit status says whether any file's error count grew."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="record the current counts as the baseline")
    parser.add_argument("--allow-growth", action="store_true", help="with --update: record counts that grew too")
    parser.add_argument("--mypy-output", type=Path, help="read this saved mypy output instead of running mypy")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="baseline file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.mypy_output:
            output, version = args.mypy_output.read_text(), read_baseline(args.baseline).get("mypy") or "unknown"
        else:
            output, version = run_mypy()
    except RuntimeError as error:
        print(f"mypy_baseline: {error}", file=sys.stderr)
        return 2
    found = errors_by_file(output)
    counts = {f: len(lines) for f, lines in found.items()}
    recorded = read_baseline(args.baseline)
    if recorded.get("mypy") and recorded["mypy"] != version:
        print(f"note: baseline recorded with mypy {recorded['mypy']}, this is mypy {version}; counts may differ")
    grew, shrank = compare(recorded["errors"], counts)
    _report(grew, shrank, found)
    if args.update:
        if grew and not args.allow_growth:
            print("not updated: the baseline may only shrink (pass --allow-growth to record growth on purpose)")
            return 1
        write_baseline(counts, version, args.baseline)
        print(f"baseline written: {sum(counts.values())} errors in {len(counts)} files ({args.baseline})")
        return 0
    total = sum(counts.values())
    print(
        f"mypy: {total} errors in {len(counts)} files; baseline {recorded['total']}"
        f"{' -- FAILED: errors grew' if grew else ''}"
    )
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
