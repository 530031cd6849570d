"""Every package the code imports is declared where users install from (a fresh `pip install .` must work)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

REPO = Path(__file__).resolve().parents[2]
LIBS = sorted(REPO.glob("MedAI*/MedAI*Lib"))
IMPORT_TO_DISTRIBUTION = {"skimage": "scikit-image", "SimpleITK": "simpleitk", "yaml": "pyyaml", "PIL": "pillow"}
# Provided by Slicer's application (or slicer-core), imported only by code that runs there.
SLICER_PROVIDED = {"slicer", "qt", "ctk", "PyTorchUtils", "slicer_core"}
OWN = {path.name for path in LIBS}
# Run only inside Slicer's application, whose Python provides what they import (e.g. `packaging`).
SLICER_APPLICATION_ONLY = {"slicer_app.py", "slicer_widget.py"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level package, imported at module level) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module.split(".")[0], id(node) in top_level))
    return found


def _third_party(path: Path):
    if path.name in SLICER_APPLICATION_ONLY:
        return
    for package, module_level in _imports(path):
        if package in sys.stdlib_module_names or package in OWN or package in SLICER_PROVIDED:
            continue
        yield IMPORT_TO_DISTRIBUTION.get(package, package).lower().replace("_", "-"), module_level


def test_every_import_is_a_declared_dependency_or_a_guarded_extra():
    project = _project()
    required = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items() if name != "test"}
    optional = set().union(*extras.values())
    problems = []
    for lib in LIBS:
        for path in lib.rglob("*.py"):
            for distribution, module_level in _third_party(path):
                if distribution in required:
                    continue
                if distribution in optional and not module_level and "require_packages" in path.read_text():
                    continue
                problems.append(f"{path.relative_to(REPO)} imports {distribution}")
    assert not problems, "undeclared imports:\n" + "\n".join(sorted(set(problems)))


def test_the_test_extra_is_not_needed_by_the_product():
    project = _project()
    required = _names(project["dependencies"])
    only_for_tests = _names(project["optional-dependencies"]["test"]) - required
    for lib in LIBS:
        for path in lib.rglob("*.py"):
            used = {distribution for distribution, _ in _third_party(path)}
            assert not (used & only_for_tests - {"onnx", "onnxruntime"}), path
