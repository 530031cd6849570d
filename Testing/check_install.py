"""Check an installation the way a new user meets it: only the declared dependencies, then the demo.

Run in a fresh virtual environment made with ``pip install .`` (no extras), as ``.ci/run`` does:

    python Testing/check_install.py [--demo-output DIR]

Imports every module of MedAICommonLib, MedAISegLib, MedAIRegisterLib and MedAIPlanLib (except the two
that only Slicer's application can import: they need Qt), runs ``medai --help`` and ``medai demo``, and
exits non-zero naming the first module or step that fails.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("MedAICommonLib", "MedAISegLib", "MedAIRegisterLib", "MedAIPlanLib")
SLICER_APPLICATION_ONLY = {"MedAICommonLib.application.slicer_app", "MedAICommonLib.application.slicer_widget"}


def all_modules() -> list[str]:
    """Every importable module name of the four packages, sub-packages included."""
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            names.append(info.name)
    return [name for name in names if name not in SLICER_APPLICATION_ONLY and not name.endswith("__main__")]


def main() -> int:
    """Import everything, then run ``medai --help`` and ``medai demo``; 0 when all succeed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-output", help="folder for the demo's results (default: a temporary folder)")
    args = parser.parse_args()
    failures = []
    for name in all_modules():
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - report every module that fails, then fail
            failures.append(f"import {name}: {type(error).__name__}: {error}")
    for line in failures:
        print(f"check_install: {line}", file=sys.stderr)
    if failures:
        return 1
    print(f"check_install: {len(all_modules())} modules import with the declared dependencies only")
    medai = [sys.executable, "-m", "MedAICommonLib.cli"]
    subprocess.run([*medai, "--help"], check=True, stdout=subprocess.DEVNULL)
    output = Path(args.demo_output or tempfile.mkdtemp(prefix="medai-demo-"))
    result = subprocess.run([*medai, "demo", "--output", str(output), "--report", str(output / "report.json")])
    if result.returncode != 0:
        print(f"check_install: medai demo failed with exit code {result.returncode}", file=sys.stderr)
        return 1
    print(f"check_install: medai demo passed ({output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
