"""Check an installation the way a new user meets it: only the declared dependencies, then the demo.

Run in a fresh virtual environment made with ``pip install .`` (no extras), as ``.ci/run`` does:

    python Testing/check_install.py [--demo-output DIR]

Imports every module of MedAICommonLib, MedAISegLib, MedAIRegisterLib and MedAIPlanLib (except those only
Slicer's application can import: ``slicer_app``, and any module importing ``qt`` or ``ctk`` at its top), runs
``medai --help`` and ``medai demo``, and exits non-zero naming the first module or step that fails.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGES = ("MedAICommonLib", "MedAISegLib", "MedAIRegisterLib", "MedAIPlanLib")
# Imports `packaging`, which Slicer's Python provides; the Qt-importing modules are found by `needs_qt`.
SLICER_APPLICATION_ONLY = {"MedAICommonLib.application.slicer_app"}
QT_MODULES = {"qt", "ctk", "slicer.util", "slicer.i18n"}


def needs_qt(name: str) -> bool:
    """True when module ``name`` imports Qt or CTK (or Slicer's Qt helpers) at its top: application-only."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Import) and any(alias.name in QT_MODULES for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module in QT_MODULES:
            return True
    return False


def all_modules() -> list[str]:
    """Every importable module name of the four packages, sub-packages included."""
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            names.append(info.name)
    return [
        name
        for name in names
        if name not in SLICER_APPLICATION_ONLY and not name.endswith("__main__") and not needs_qt(name)
    ]


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
