"""The Slicer extension is what a Slicer developer expects: layout, CMake lists, panels, parameters, icons."""

import ast
import hashlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

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
    sources = [
        (REPO / module / f"{module}.py").read_text(),
        (REPO / "MedAICommon/MedAICommonLib/application/slicer_widget.py").read_text(),
    ]
    used = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"
            ):
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
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and isinstance(node.func.value.value, ast.Name)
            and node.func.value.value.id == "self"
        ):
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
        assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json (the schema 241 of the 255 entries in
# Slicer/ExtensionsIndex use, MedAI.json included): required keys, and each allowed key's JSON type and values.
CATALOG_SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_PROPERTIES = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
CATALOG_ENUMS = {"scm_type": ("git", "local"), "tier": (1, 3, 5)}
# Categories Slicer/ExtensionsIndex scripts/check_description_files.py accepts for a medical-AI extension.
INDEX_CATEGORIES = {"Segmentation", "Registration", "Radiotherapy", "Quantification", "Utilities", "Planning"}


def catalog_entry_errors(entry) -> list[str]:
    """What the catalog-entry schema (v1.0.1) rejects in ``entry``; empty when it validates."""
    if not isinstance(entry, dict):
        return ["the entry is not a JSON object"]
    errors = [f"required key {key!r} is missing" for key in CATALOG_REQUIRED if key not in entry]
    for key, value in entry.items():
        expected = CATALOG_PROPERTIES.get(key)
        if expected is None:
            errors.append(f"key {key!r} is not allowed (additionalProperties: false)")
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            errors.append(f"{key!r} must be {expected.__name__}, got {value!r}")
        elif key in CATALOG_ENUMS and value not in CATALOG_ENUMS[key]:
            errors.append(f"{key!r} must be one of {CATALOG_ENUMS[key]}, got {value!r}")
        elif key == "build_dependencies" and not all(isinstance(item, str) for item in value):
            errors.append("build_dependencies items must be strings")
    return errors


def test_catalog_validator_rejects_what_the_schema_rejects():
    good = {"$schema": CATALOG_SCHEMA_URL, "category": "Segmentation", "scm_url": "https://github.com/a/SlicerB.git"}
    assert catalog_entry_errors(good) == []
    assert catalog_entry_errors({**good, "tier": 2}) == ["'tier' must be one of (1, 3, 5), got 2"]
    assert catalog_entry_errors({**good, "scmurl": "x"}) == [
        "key 'scmurl' is not allowed (additionalProperties: false)"
    ]
    assert catalog_entry_errors({"category": "Segmentation", "scm_url": "x", "enabled": 1}) == [
        "required key '$schema' is missing",
        "'enabled' must be bool, got 1",
    ]
    assert catalog_entry_errors({**good, "build_dependencies": [3]}) == ["build_dependencies items must be strings"]


def test_extensions_index_entry():
    """MedAI.json validates against the catalog schema and passes the Extensions Index's own checks."""
    entry = json.loads((REPO / "MedAI.json").read_text())
    assert catalog_entry_errors(entry) == []
    assert entry["$schema"] == CATALOG_SCHEMA_URL
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["category"] in INDEX_CATEGORIES
    url = urlsplit(entry["scm_url"])
    assert url.scheme in ("git", "https")
    assert "slicer" in Path(url.path).stem.lower(), "the Index wants the repository name to contain 'Slicer'"
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"project\s*\(\s*([^\s)]+)", top, re.IGNORECASE).group(1) == "MedAI"  # = MedAI.json's stem
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = re.search(rf'set\s*\({key}\s*"([^"]+)"\s*\)', top).group(1).split()
        assert urls
        assert all(u.startswith("https://") for u in urls)
        for u in urls:  # each picture is in this repository at the path the URL names
            assert (REPO / u.split("/main/", 1)[1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_license_is_the_apache_2_0_text():
    """The Index requires a licence file at the root; pyproject declares Apache-2.0, so LICENSE is its full text."""
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"  # apache.org LICENSE-2.0.txt
    assert b"Apache License\n                           Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
