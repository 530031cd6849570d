"""The Slicer extension is what a Slicer developer expects: layout, CMake lists, panels, parameters, icons."""

import ast
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("MedAISeg", "MedAIRegister", "MedAIPlan")
CORE_LOGIC = {
    "MedAISeg": [("MedAISegLib.logic", "MedAISegLogic"), ("MedAISegLib.training_logic", "MedAITrainingLogic")],
    "MedAIRegister": [("MedAIRegisterLib.logic", "MedAIRegisterLogic")],
    "MedAIPlan": [("MedAIPlanLib.logic", "MedAIPlanLogic"), ("MedAIPlanLib.evaluation_logic", "PlanEvaluationLogic")],
}


def classes(module: str) -> dict[str, ast.ClassDef]:
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def parameter_fields(module: str) -> set[str]:
    node = classes(module)[f"{module}ParameterNode"]
    return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}


def ui_tree(module: str) -> ET.Element:
    return ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()


@pytest.mark.parametrize("module", MODULES)
def test_module_has_template_classes_and_resources(module):
    found = classes(module)
    for suffix in ("", "ParameterNode", "Widget", "Logic", "Test"):
        assert f"{module}{suffix}" in found, f"{module}.py lacks class {module}{suffix}"
    decorators = [d.id for d in found[f"{module}ParameterNode"].decorator_list if isinstance(d, ast.Name)]
    assert "parameterNodeWrapper" in decorators
    icon = REPO / module / "Resources" / "Icons" / f"{module}.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (REPO / module / "Resources" / f"requirements-{module}.txt").read_text().strip()


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_match_parameter_node(module):
    root = ui_tree(module)
    names = set()
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names.add(prop.find("string").text)
    assert names == parameter_fields(module)


@pytest.mark.parametrize("module", MODULES)
def test_widget_uses_only_widgets_that_exist_in_ui(module):
    widget_names = {w.get("name") for w in ui_tree(module).iter("widget")}
    sources = [(REPO / module / f"{module}.py").read_text(),
               (REPO / "MedAICommon/MedAICommonLib/slicer_widget.py").read_text()]
    used = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "self"):
                used.add(node.attr)
    assert used - widget_names == set()


@pytest.mark.parametrize("module", MODULES)
def test_slicer_logic_calls_existing_core_logic_methods(module):
    """The parameter-node adapters call methods the headless Logic really has (``self.core.X``,
    ``self.training.X`` / ``self.evaluation.X``), and the module file imports none of it at load time."""
    import importlib

    sys.path.insert(0, str(REPO / module))
    cores = [getattr(importlib.import_module(m), c) for m, c in CORE_LOGIC[module]]
    logic = classes(module)[f"{module}Logic"]
    missing, calls = [], 0
    for node in ast.walk(logic):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Attribute) and isinstance(node.func.value.value, ast.Name)
                and node.func.value.value.id == "self"):
            holder, name = node.func.value.attr, node.func.attr
            if holder in ("core", "training", "evaluation"):
                calls += 1
                if not hasattr(cores[0] if holder == "core" else cores[-1], name):
                    missing.append(f"{holder}.{name}")
    assert calls > 0
    assert missing == []
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    top_imports = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
    assert not any(m.startswith(f"{module}Lib") for m in top_imports), "heavy Lib imports must be lazy"


def test_cmake_lists_every_script_and_resource():
    sys.path.insert(0, str(REPO / "Utilities"))
    import update_cmake_sources

    assert update_cmake_sources.main(check=True) == 0
    top = (REPO / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    for module in ("MedAICommon", *MODULES):
        assert f"add_subdirectory({module})" in top
        text = (REPO / module / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule(" in text
        if module != "MedAICommon":
            assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extensions_index_entry():
    entry = json.loads((REPO / "MedAI.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}
    assert set(entry) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"]
