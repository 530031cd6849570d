"""Every Slicer API MedAI's panels use, and whether each exists (with the arguments passed) in each Slicer version.

Scans the module files (``MedAI*/MedAI*.py``) and ``MedAICommonLib`` with ``ast`` for ``slicer.*`` names, and checks
them against Slicer's own sources (``slicer_reference``). Run it to print the table for the README::

    python Testing/Python/slicer_api_usage.py

``test_slicer_contract.py`` asserts that the table has no failure.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import slicer_reference as ref

REPO = ref.REPO
RUNTIME_ATTRIBUTES = ("app", "mrmlScene", "modules", "moduleNames")
PASSING = ("ok", "slicer-core", "by hand", "n/a")

# Members of C++ objects that Slicer's Python layer does not use, checked by reading Slicer's C++ sources at
# v5.8.1, v5.10.0, v5.12.3 and main (Base/QTCore/qSlicerCoreApplication.h: Q_PROPERTY majorVersion/minorVersion,
# applicationLogic(); Modules/Loadable/Segmentations: the Segmentations module, slicer.modules.segmentations).
HAND_CHECKED = {
    "slicer.app.majorVersion": "qSlicerCoreApplication.h Q_PROPERTY(int majorVersion)",
    "slicer.app.minorVersion": "qSlicerCoreApplication.h Q_PROPERTY(int minorVersion)",
    "slicer.app.applicationLogic": "qSlicerCoreApplication.h applicationLogic()",
    "slicer.modules.segmentations": "Modules/Loadable/Segmentations (core module)",
}


# Functions of slicer_app.py that run only on some Slicer versions: the installer each one implements.
GUARDED_FUNCTIONS = {
    "_ensure_with_packaging": "slicer.packaging.pip_ensure",
    "_ensure_with_pip_install": "slicer.util.pip_install",
}


@dataclass(frozen=True)
class Use:
    """One use of a ``slicer.*`` name in MedAI's code."""

    name: str
    file: str
    line: int
    function: str = ""
    call: bool = False
    positional: int = 0
    keywords: tuple[str, ...] = ()


def medai_files() -> list[Path]:
    """The module files and MedAICommonLib: the code that runs inside the Slicer application."""
    files = sorted(REPO.glob("MedAI*/MedAI*.py"))
    return files + sorted((REPO / "MedAICommon" / "MedAICommonLib").rglob("*.py"))


def _aliases(tree: ast.Module) -> dict[str, str]:
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "slicer":
                    aliases[alias.asname or "slicer"] = alias.name if alias.asname else "slicer"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "slicer":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: Path, aliases: dict[str, str]):
        self.path, self.aliases, self.functions, self.uses = path, aliases, [], []

    def _add(self, node, name, **call) -> None:
        where = self.path.relative_to(REPO).as_posix() if self.path.is_relative_to(REPO) else str(self.path)
        self.uses.append(Use(name, where, node.lineno, self.functions[-1] if self.functions else "", **call))

    def visit_FunctionDef(self, node) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    def visit_ImportFrom(self, node) -> None:
        if node.level == 0 and (node.module or "").split(".")[0] == "slicer":
            for alias in node.names:
                self._add(node, f"{node.module}.{alias.name}")

    def visit_Import(self, node) -> None:
        for alias in node.names:
            if alias.name.startswith("slicer."):
                self._add(node, alias.name)

    def visit_Call(self, node) -> None:
        name = _dotted(node.func, self.aliases)
        if name is None:
            self.generic_visit(node)
            return
        self._add(
            node,
            name,
            call=True,
            positional=len(node.args),
            keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
        )
        for child in [*node.args, *node.keywords]:
            self.visit(child)

    def visit_Attribute(self, node) -> None:
        name = _dotted(node, self.aliases)
        if name is None:
            self.generic_visit(node)
        else:
            self._add(node, name)

    def visit_Name(self, node) -> None:
        if node.id in self.aliases and self.aliases[node.id] != "slicer":
            self._add(node, self.aliases[node.id])


def slicer_uses(files: list[Path] | None = None) -> list[Use]:
    """Every ``slicer.*`` use (imports, attributes, calls with their arguments) in ``files``."""
    uses = []
    for path in files if files is not None else medai_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scanner = _Scanner(path, _aliases(tree))
        scanner.visit(tree)
        uses += scanner.uses
    return uses


def applies(use: Use, folder: str) -> bool:
    """Whether ``use`` runs on the Slicer at ``folder``: version-guarded installers only where chosen."""
    from MedAICommonLib.application import slicer_app

    installer = GUARDED_FUNCTIONS.get(use.function) if use.file.endswith("slicer_app.py") else None
    return installer is None or slicer_app.installer_for(ref.version_of(folder)[:2]) == installer


def problem(use: Use, folder: str, slicer_module) -> str | None:
    """Why ``use`` would fail on the Slicer at ``folder``; None when it exists there as used."""
    parts = use.name.split(".")
    if len(parts) < 2:
        return None
    head = parts[1]
    if head in RUNTIME_ATTRIBUTES:
        return _runtime_problem(use, folder, slicer_module)
    if head.startswith(("vtk", "qSlicer", "qMRML")):  # compiled classes: checked in slicer-core
        target = slicer_module
        for part in parts[1:]:
            if not hasattr(target, part):
                return f"{use.name} not in slicer-core"
            target = getattr(target, part)
        return None
    api = ref.module_api(folder, head)
    if api is None:
        return f"slicer.{head} does not exist"
    if len(parts) == 2:
        return None
    if parts[2] not in api.names:
        return f"{'.'.join(parts[:3])} does not exist"
    signature = api.names[parts[2]]
    if use.call and len(parts) == 3 and signature is not None:
        issues = signature.problems(use.positional, use.keywords)
        return f"{use.name}: {'; '.join(issues)}" if issues else None
    return None


def _runtime_problem(use: Use, folder: str, slicer_module) -> str | None:
    parts = use.name.split(".")
    if parts[1] not in ref.runtime_attributes(folder):
        return f"slicer.{parts[1]} is not set by the application"
    if len(parts) == 2 or ".".join(parts[:3]) in HAND_CHECKED:
        return None
    if parts[1] == "app" and parts[2] not in ref.app_members_used(folder):
        return f"{'.'.join(parts[:3])} is not used anywhere in Slicer's Python layer; check it by hand"
    if parts[1] == "mrmlScene" and not hasattr(slicer_module.vtkMRMLScene, parts[2]):
        return f"{'.'.join(parts[:3])} is not a vtkMRMLScene method"
    if parts[1] in ("modules", "moduleNames"):
        return f"{'.'.join(parts[:3])} is a loaded module's name; check it by hand"
    return None


def evidence(use: Use) -> str:
    """How an existing API was confirmed: 'ok' (in that version's sources), 'slicer-core' or 'by hand'."""
    parts = use.name.split(".")
    if checked_name(use) in HAND_CHECKED:
        return "by hand"
    if parts[1].startswith(("vtk", "qSlicer", "qMRML")) or (parts[1] == "mrmlScene" and len(parts) > 2):
        return "slicer-core"
    return "ok"


def checked_name(use: Use) -> str:
    """The part of ``use.name`` that is checked (``slicer.util.X``, ``slicer.app.X``, a class and its member)."""
    return ".".join(use.name.split(".")[: 4 if use.name.split(".")[1].startswith("vtk") else 3])


def api_table(uses: list[Use], folders: list[str], applies, slicer_module) -> list[dict]:
    """One row per checked API: the files using it, and per version folder 'ok', 'n/a' or the problem."""
    rows: dict[str, dict] = {}
    for use in uses:
        row = rows.setdefault(checked_name(use), {"api": checked_name(use), "files": set(), "versions": {}})
        row["files"].add(use.file)
        for folder in folders:
            if not applies(use, folder):
                row["versions"].setdefault(folder, "n/a")
                continue
            found = problem(use, folder, slicer_module)
            if found:
                row["versions"][folder] = found
            elif row["versions"].get(folder) in (None, "n/a"):
                row["versions"][folder] = evidence(use)
    return [rows[k] for k in sorted(rows)]


def markdown(rows: list[dict], folders: list[str]) -> str:
    """The table as Markdown, with where each kind of API was checked."""
    lines = ["| Slicer API | used in | " + " | ".join(folders) + " |", "|---|---|" + "---|" * len(folders)]
    for row in rows:
        files = ", ".join(sorted(Path(f).name for f in row["files"]))
        cells = [row["versions"].get(f, "") for f in folders]
        lines.append(f"| `{row['api']}` | {files} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Checked in: `Base/Python/slicer/<module>.py` of each version for `slicer.util`, `slicer.packaging`,",
        "`slicer.i18n`, `slicer.ScriptedLoadableModule` and `slicer.parameterNodeWrapper` names and call arguments;",
        "`slicer/__init__.py` (its documented attributes) for `slicer.app`/`slicer.mrmlScene`/`slicer.modules`;",
        "Slicer's own Python uses of `slicer.app.<member>`; the slicer-core wheel for `vtk*` classes and",
        "`vtkMRMLScene` methods (`slicer-core`: the wheel this test suite runs on); by hand in Slicer's C++: "
        + "; ".join(f"`{k}` ({v})" for k, v in HAND_CHECKED.items() if k in {r["api"] for r in rows})
        + ".",
    ]
    return "\n".join(lines)


def main() -> int:
    """Print the table; 1 when any API fails on a version it is used on."""
    sys.path.insert(0, str(REPO / "MedAICommon"))
    import slicer

    folders = ref.version_folders()
    if not folders:
        print(f"Slicer reference sources not found at {ref.REFERENCE}")
        return 1
    rows = api_table(slicer_uses(), folders, applies, slicer)
    print(markdown(rows, folders))
    return int(any(v not in PASSING for row in rows for v in row["versions"].values()))


if __name__ == "__main__":
    sys.exit(main())
