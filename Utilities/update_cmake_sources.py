"""Rewrite the script and resource lists in each module's CMakeLists.txt from the files on disk.

slicerMacroBuildScriptedModule installs only what is listed, so every Python file of a module
and its Lib package, and every resource, must be named. Run after adding or removing files;
``Testing/Python/test_extension_layout.py`` fails when the lists are stale.

slicerMacroBuildScriptedModule copies every module's scripts and resources into the same
``qt-scripted-modules`` folder, so two modules may not ship a file at the same relative path
(Ninja stops with "multiple rules generate", Make silently keeps one): name module-specific
resources after the module (``Resources/requirements-<ModuleName>.txt``). ``--check`` also fails
on such a clash.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")


def module_scripts(module: str) -> list[str]:
    """Python files of the module (its main file and its Lib package), relative to its folder."""
    folder = REPO / module
    files = [f"{module}.py"] + [
        p.relative_to(folder).as_posix() for p in sorted((folder / f"{module}Lib").rglob("*.py"))
    ]
    return [f for f in files if "__pycache__" not in f]


def module_resources(module: str) -> list[str]:
    """Every file under the module's Resources (icons, UI, catalogues, requirements), then the data files inside
    its Lib package (``*.yaml``: e.g. the cohort pipelines, package data of the wheel too); hidden files excepted."""
    folder = REPO / module
    files = [p for p in sorted((folder / "Resources").rglob("*")) if p.is_file()]
    files += sorted((folder / f"{module}Lib").rglob("*.yaml"))
    files = [p.relative_to(folder) for p in files]
    return [p.as_posix() for p in files if not any(part.startswith(".") or part == "__pycache__" for part in p.parts)]


def clashing_paths() -> dict[str, list[str]]:
    """Relative install paths that more than one module would install, with the modules that do."""
    owners: dict[str, list[str]] = {}
    for module in MODULES:
        for item in module_scripts(module) + module_resources(module):
            owners.setdefault(item, []).append(module)
    return {item: modules for item, modules in owners.items() if len(modules) > 1}


def render_list(name: str, items: list[str]) -> str:
    """A CMake ``set(NAME ...)`` block, one item per line."""
    return f"set({name}\n" + "".join(f"  {item}\n" for item in items) + "  )"


def updated_cmake(module: str, text: str) -> str:
    """``text`` (a module's CMakeLists.txt) with its script and resource lists regenerated."""
    text = re.sub(
        r"set\(MODULE_PYTHON_SCRIPTS\n.*?\n  \)",
        render_list("MODULE_PYTHON_SCRIPTS", module_scripts(module)),
        text,
        flags=re.S,
    )
    return re.sub(
        r"set\(MODULE_PYTHON_RESOURCES\n.*?\n  \)",
        render_list("MODULE_PYTHON_RESOURCES", module_resources(module)),
        text,
        flags=re.S,
    )


def main(check: bool = False) -> int:
    """Rewrite stale lists (or, with ``check``, only report them); 1 when stale or clashing."""
    clashes = clashing_paths()
    if clashes:
        for item, modules in sorted(clashes.items()):
            print(
                f"{item} is installed by {', '.join(modules)} into the same folder; "
                f"rename it per module (e.g. Resources/requirements-<ModuleName>.txt)"
            )
        return 1
    stale = []
    for module in MODULES:
        path = REPO / module / "CMakeLists.txt"
        text = path.read_text()
        new = updated_cmake(module, text)
        if new != text:
            stale.append(module)
            if not check:
                path.write_text(new)
    if check and stale:
        print(f"stale CMake lists: {stale}; run python Utilities/update_cmake_sources.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
