"""The layering rules of DESIGN.md, checked on the source: algorithms import neither Qt nor Slicer."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Files of a *Lib package that may talk to MRML (through the bridge); all others are algorithms.
MRML_FACING = ("logic", "commands", "demo", "scenarios")
FORBIDDEN_EVERYWHERE_IN_LIBS = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.i18n"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module if node.level == 0 else "." * node.level + node.module)
    return names


def lib_files():
    for lib in ("MedAISeg/MedAISegLib", "MedAIRegister/MedAIRegisterLib", "MedAIPlan/MedAIPlanLib"):
        yield from sorted((REPO / lib).rglob("*.py"))


def test_algorithm_files_import_neither_qt_nor_slicer():
    offenders = []
    for path in lib_files():
        stem = path.stem
        mrml_facing = any(stem == name or stem.endswith(f"_{name}") for name in MRML_FACING)
        for module in imported_modules(path):
            root = module.split(".")[0]
            if module in FORBIDDEN_EVERYWHERE_IN_LIBS or root in ("qt", "ctk"):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
            elif not mrml_facing and (
                root == "slicer" or module.startswith("MedAICommonLib.bridge") or module == "MedAICommonLib.runtime"
            ):
                offenders.append(f"{path.relative_to(REPO)} imports {module} (algorithms must not touch MRML)")
    assert offenders == []


def test_shared_geometry_and_algorithms_of_common_lib_are_mrml_free():
    for name in ("geometry.py", "dicom_series.py", "synthetic/phantoms.py", "progress.py", "devices.py"):
        modules = imported_modules(REPO / "MedAICommon/MedAICommonLib" / name)
        assert not any(m.split(".")[0] in ("slicer", "qt", "vtk") for m in modules), name
