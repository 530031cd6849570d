"""``ruff format --check`` on every tracked Python file, against a recorded list of files not yet formatted.

    python Utilities/format_check.py             # check: exit 1 if a file outside the list is not formatted
    python Utilities/format_check.py --update    # drop the listed files that are formatted now

``Utilities/format-baseline.txt`` lists the files that predate ``ruff format`` and would grow past the size
rules (400 lines a file, 60 a function) if formatted as they are: they are formatted when they are split.
The list may only shrink. Every other file, and every new file, must be formatted. A listed file that is
formatted already fails the check too, with a reminder to run ``--update``, so the list shrinks with the tree.

Exit codes: 0 passed (or the list was updated), 1 a file is not formatted or the list is stale, 2 ruff is missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "Utilities" / "format-baseline.txt"


def tracked_python_files() -> list[str]:
    """Tracked ``*.py`` files, relative to the repository, as git lists them."""
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    return sorted(path for path in out.stdout.split() if (REPO / path).is_file())


def unformatted(files: list[str]) -> set[str]:
    """Those of ``files`` that ``ruff format --check`` would change."""
    if not files:
        return set()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--check", "--output-format", "concise", *files],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError as error:  # pragma: no cover - the interpreter always exists
        raise RuntimeError("ruff is not installed; install the test extra: pip install -e '.[test]'") from error
    if done.returncode not in (0, 1):
        raise RuntimeError(f"ruff format could not run:\n{done.stderr}")
    # "PATH:LINE:COL: unformatted: ..." (concise output), or "Would reformat: PATH" (older ruff)
    found = set()
    for line in done.stdout.splitlines():
        if line.startswith("Would reformat: "):
            found.add(line.removeprefix("Would reformat: ").strip())
        elif ": unformatted:" in line:
            found.add(line.split(":", 1)[0])
    return found


def read_baseline() -> set[str]:
    """The listed files (comments and blank lines skipped)."""
    if not BASELINE.exists():
        return set()
    lines = (line.strip() for line in BASELINE.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def write_baseline(files: set[str]) -> None:
    """Record ``files`` as the list, with its header."""
    header = "# Files not yet formatted by `ruff format` (see Utilities/format_check.py); this list may only shrink.\n"
    BASELINE.write_text(header + "".join(f"{path}\n" for path in sorted(files)))


def main(argv: list[str] | None = None) -> int:
    """Check (or with ``--update`` shrink) the format baseline; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="drop listed files that are formatted now")
    args = parser.parse_args(argv)
    try:
        files = tracked_python_files()
        needing = unformatted(files)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    listed = read_baseline()
    offenders = sorted(needing - listed)
    stale = sorted(listed - needing)
    if args.update:
        write_baseline(listed & needing)
        print(f"format baseline: {len(listed & needing)} files (dropped {len(stale)})")
        return 0 if not offenders else _report(offenders, [])
    return _report(offenders, stale)


def _report(offenders: list[str], stale: list[str]) -> int:
    for path in offenders:
        print(f"not formatted: {path} (run: ruff format {path})")
    for path in stale:
        print(f"formatted but still listed: {path} (run: python Utilities/format_check.py --update)")
    if offenders or stale:
        return 1
    print("ruff format: every file outside the baseline is formatted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
