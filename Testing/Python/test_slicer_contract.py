"""MedAI's panels against Slicer's real Python layer at each reference version (5.8.1, 5.10.0, 5.12.3, main).

Slicer's sources are parsed with ``ast`` (``slicer_reference``), never imported. A missing reference folder skips.
"""

from __future__ import annotations

import ast
import contextlib
import pathlib
import re
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import slicer
import slicer_api_usage as usage
import slicer_reference as ref

from MedAICommonLib.application import slicer_app

REPO = ref.REPO
MODULE_FILES = sorted(REPO.glob("MedAI*/MedAI*.py"))
MODULES = [p.stem for p in MODULE_FILES]
FOLDERS = ref.version_folders() or [pytest.param(None, marks=pytest.mark.skip(
    reason=f"Slicer reference sources not found at {ref.REFERENCE}"))]


@pytest.fixture(scope="module")
def uses():
    return usage.slicer_uses()


def problems_in(source: str, folder: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    found = [usage.problem(use, folder, slicer) for use in usage.slicer_uses([path])]
    return [p for p in found if p]


# --- slicer.* names and call arguments ---------------------------------------------------------------------
@pytest.mark.parametrize("folder", FOLDERS)
def test_every_slicer_api_exists_as_called(folder, uses):
    """Each slicer.* name the panels use exists in that version, and each call's arguments bind to its signature;
    version-guarded code (the two package installers) is checked only on the versions that run it."""
    checked = [use for use in uses if usage.applies(use, folder)]
    assert len(checked) > 50
    failures = {f"{u.file}:{u.line} {p}" for u in checked if (p := usage.problem(u, folder, slicer))}
    assert failures == set()


@pytest.mark.parametrize("folder", FOLDERS)
def test_checker_catches_missing_apis_and_wrong_keywords(folder, tmp_path):
    source = ("import slicer\nimport slicer.pydeps as pydeps\n"
              "slicer.util.confirmOkCancelDisplay('x', title='t')\n"
              "slicer.util.tryWithErrorDisplay('m', True, False, 4)\n"
              "slicer.util.noSuchHelper()\nslicer.app.noSuchMember\n")
    found = problems_in(source, folder, tmp_path)
    assert "slicer.pydeps does not exist" in found
    assert "slicer.util.noSuchHelper does not exist" in found
    assert any("slicer.app.noSuchMember" in p for p in found)
    assert "slicer.util.tryWithErrorDisplay: 4 positional arguments, accepts 3" in found
    # confirmOkCancelDisplay takes **kwargs (forwarded to the message box): any keyword binds
    assert not any("confirmOkCancelDisplay" in p for p in found)
    old_install = problems_in("import slicer\nslicer.util.pip_install('a', requester='M')\n", folder, tmp_path)
    assert old_install == (["slicer.util.pip_install: no keyword 'requester'"] if ref.version_of(folder) < (5, 12)
                           else [])


@pytest.mark.parametrize("folder", FOLDERS)
def test_installer_choice_matches_what_each_version_has(folder):
    """slicer.packaging.pip_ensure is used exactly where it exists, slicer.util.pip_install elsewhere; the packaging
    module is not imported by ``import slicer``, so slicer_app imports it explicitly."""
    packaging = ref.module_api(folder, "packaging")
    has_pip_ensure = packaging is not None and "pip_ensure" in packaging.names
    chosen = slicer_app.installer_for(ref.version_of(folder)[:2])
    assert (chosen == slicer_app.INSTALL_WITH_PACKAGING) == has_pip_ensure
    assert "pip_install" in ref.module_api(folder, "util").names
    init = ast.parse((ref.python_root(folder) / "__init__.py").read_text())
    imported = {a.name for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not imported & {"packaging", "slicer.packaging"}


def test_version_guarded_apis_stay_in_their_guarded_functions(uses):
    packaging_uses = [u for u in uses if u.name.startswith("slicer.packaging")]
    assert packaging_uses
    assert {u.function for u in packaging_uses} == {"_ensure_with_packaging"}
    assert "slicer.packaging" in {u.name for u in packaging_uses}  # the explicit import
    source = ast.parse(Path(slicer_app.__file__).read_text())
    dispatch = next(n for n in source.body if isinstance(n, ast.FunctionDef) and n.name == "ensure_requirements")
    called = {n.func.id for n in ast.walk(dispatch) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"installer_for", *usage.GUARDED_FUNCTIONS} <= called


@pytest.mark.parametrize("folder", FOLDERS)
def test_api_table_has_no_failure(folder, uses):
    rows = usage.api_table(uses, [folder], usage.applies, slicer)
    cells = {row["api"]: row["versions"][folder] for row in rows}
    assert {api: c for api, c in cells.items() if c not in usage.PASSING} == {}
    assert cells["slicer.util.tryWithErrorDisplay"] == "ok"
    expected = "ok" if ref.version_of(folder) >= (5, 12) else "n/a"
    assert cells["slicer.packaging.pip_ensure"] == expected
    assert "slicer.app.majorVersion" in usage.markdown(rows, [folder])


# --- parameter-node annotations ------------------------------------------------------------------------------
class ValidatorCall:
    """A validator written in an annotation (``Choice([...])``), recorded instead of built."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args, **kwargs):
        call = ValidatorCall(self.name)
        call.args, call.positional, call.keywords = args, len(args), tuple(kwargs)
        return call

    def rejects(self, value) -> bool:
        """Whether Slicer's validator of this name (Choice, WithinRange, Minimum, Maximum) rejects ``value``."""
        checks = {"Choice": lambda c: value not in c, "WithinRange": lambda lo, hi: not lo <= value <= hi,
                  "Minimum": lambda lo: value < lo, "Maximum": lambda hi: value > hi}
        return self.name in checks and checks[self.name](*self.args)


def parameter_annotations(path: Path) -> dict[str, object]:
    """Field name -> evaluated annotation of the file's ``@parameterNodeWrapper`` class (aliases resolved)."""
    tree = ast.parse(path.read_text())
    namespace = {"Annotated": typing.Annotated, "Union": typing.Union, "Optional": typing.Optional,
                 "Any": typing.Any, "Path": pathlib.Path, "list": list, "tuple": tuple, "dict": dict}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "slicer":
            namespace.update({a.asname or a.name: getattr(slicer, a.name) for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module == "slicer.parameterNodeWrapper":
            namespace.update({a.asname or a.name: ValidatorCall(a.name) for a in node.names})
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(Exception):  # only type aliases matter here
                namespace[node.targets[0].id] = eval(compile(ast.Expression(node.value), str(path), "eval"), namespace)
    wrapped = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(getattr(d, "id", "") == "parameterNodeWrapper" for d in n.decorator_list)]
    return {field.target.id: eval(compile(ast.Expression(field.annotation), str(path), "eval"), namespace)
            for cls in wrapped for field in cls.body if isinstance(field, ast.AnnAssign)}


def parameter_defaults(path: Path) -> dict[str, object]:
    """Field name -> literal default of the ``@parameterNodeWrapper`` class's fields that have one."""
    tree = ast.parse(path.read_text())
    return {field.target.id: ast.literal_eval(field.value) for cls in tree.body if isinstance(cls, ast.ClassDef)
            and any(getattr(d, "id", "") == "parameterNodeWrapper" for d in cls.decorator_list)
            for field in cls.body if isinstance(field, ast.AnnAssign) and field.value is not None}


@pytest.mark.parametrize("module_file", MODULE_FILES, ids=MODULES)
def test_parameter_defaults_pass_their_validators(module_file):
    """The wrapper writes each default through its validators when a parameter node is created, so a default
    outside its Choice or range raises ValueError before the panel opens."""
    annotations = parameter_annotations(module_file)
    defaults = parameter_defaults(module_file)
    rejected = {name: value for name, value in defaults.items()
                for item in split_annotated(annotations[name])[1]
                if isinstance(item, ValidatorCall) and item.rejects(value)}
    assert rejected == {}
    assert ValidatorCall("Choice")(["a", "b"]).rejects("c")
    assert not ValidatorCall("WithinRange")(0.0, 1.0).rejects(1.0)


def split_annotated(annotation) -> tuple[object, list]:
    if typing.get_origin(annotation) is typing.Annotated:
        return annotation.__origin__, list(annotation.__metadata__)
    return annotation, []


def mrml_classes(annotation) -> list[type]:
    base, _ = split_annotated(annotation)
    members = typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)
    return [m for m in members if isinstance(m, type) and issubclass(m, slicer.vtkMRMLNode)]


def annotation_problems(path: Path, folder: str) -> list[str]:
    """Annotations the serializers at ``folder`` cannot handle, and validators that do not exist or bind there."""
    validators = ref.validator_api(folder)
    found = []
    for name, annotation in parameter_annotations(path).items():
        base, metadata = split_annotated(annotation)
        if ref.serializer_for(folder, slicer, base) is None:
            found.append(f"{path.stem}.{name}: no serializer for {base!r}")
        for item in metadata:
            if not isinstance(item, ValidatorCall):
                continue
            if item.name not in validators.names:
                found.append(f"{path.stem}.{name}: validator {item.name} does not exist")
            elif validators.names[item.name] is not None:
                found += [f"{path.stem}.{name}: {item.name} {p}"
                          for p in validators.names[item.name].problems(item.positional, item.keywords)]
    return found


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("module_file", MODULE_FILES, ids=MODULES)
def test_parameter_node_annotations_are_supported(folder, module_file):
    assert annotation_problems(module_file, folder) == []


@pytest.mark.parametrize("module_file", MODULE_FILES, ids=MODULES)
def test_parameter_node_node_classes_are_concrete(module_file, scene):
    """A node selector creates nodes of the annotated class, so each must be instantiable (not abstract)."""
    classes = {cls for a in parameter_annotations(module_file).values() for cls in mrml_classes(a)}
    for cls in sorted(classes, key=lambda c: c.__name__):
        assert isinstance(cls(), cls)
        assert scene.AddNewNodeByClass(cls.__name__) is not None, f"{cls.__name__} cannot be created"


@pytest.mark.parametrize("folder", FOLDERS)
def test_annotation_checks_catch_abstract_nodes_and_unsupported_types(folder, tmp_path, scene):
    module = tmp_path / "Snippet.py"
    module.write_text("from typing import Annotated\nfrom slicer import vtkMRMLDisplayableNode, vtkMRMLModelNode\n"
                      "from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper, NoSuchValidator\n"
                      "@parameterNodeWrapper\nclass P:\n    surface: vtkMRMLDisplayableNode\n"
                      "    either: vtkMRMLModelNode | None\n    mode: Annotated[str, Choice(['a'], 2, 3)] = 'a'\n"
                      "    count: Annotated[int, NoSuchValidator()] = 1\n    blob: bytes\n")
    found = annotation_problems(module, folder)
    assert "Snippet.blob: no serializer for <class 'bytes'>" in found
    assert "Snippet.count: validator NoSuchValidator does not exist" in found
    assert any(p.startswith("Snippet.mode: Choice") for p in found)
    # PEP 604 unions are serializable from 5.10 on (types.UnionType); 5.8.1 knows only typing.Union
    assert any(p.startswith("Snippet.either:") for p in found) == (ref.version_of(folder) < (5, 10))
    (abstract,) = {c for a in parameter_annotations(module).values() for c in mrml_classes(a)} - {
        slicer.vtkMRMLModelNode}
    with pytest.raises(TypeError, match="abstract"):
        abstract()
    assert scene.AddNewNodeByClass(abstract.__name__) is None


# --- what the build installs ---------------------------------------------------------------------------------
def cmake_list(module: str, variable: str) -> list[str]:
    text = (REPO / module / "CMakeLists.txt").read_text()
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


@pytest.mark.parametrize("folder", FOLDERS)
def test_scripted_modules_share_one_install_folder(folder):
    """Without WITH_SUBDIR every scripted module of the extension is copied into one qt-scripted-modules folder."""
    macro = (REFERENCE_CMAKE := ref.REFERENCE / folder / "CMake" / "SlicerMacroBuildScriptedModule.cmake").read_text()
    assert 'set(_destination_subdir "")' in macro, REFERENCE_CMAKE
    assert "if(MY_SLICER_WITH_SUBDIR)" in macro
    for module in MODULES:
        assert "WITH_SUBDIR" not in (REPO / module / "CMakeLists.txt").read_text()


def test_no_two_modules_install_the_same_path_and_every_file_is_listed():
    owners: dict[str, list[str]] = {}
    for module in MODULES:
        listed = cmake_list(module, "MODULE_PYTHON_SCRIPTS") + cmake_list(module, "MODULE_PYTHON_RESOURCES")
        assert len(listed) == len(set(listed)), f"{module} lists a file twice"
        for item in listed:
            owners.setdefault(item, []).append(module)
            assert (REPO / module / item).is_file(), f"{module}/CMakeLists.txt lists missing {item}"
        folder = REPO / module
        on_disk = {p.relative_to(folder).as_posix() for p in (folder / f"{module}Lib").rglob("*.py")}
        resources = [p.relative_to(folder) for p in (folder / "Resources").rglob("*") if p.is_file()]
        on_disk |= {p.as_posix() for p in resources
                    if not any(part.startswith(".") or part == "__pycache__" for part in p.parts)}
        on_disk.add(f"{module}.py")
        assert on_disk - set(listed) == set(), f"{module}/CMakeLists.txt does not list these"
    assert {item: mods for item, mods in owners.items() if len(mods) > 1} == {}


# --- members inherited from Slicer's scripted-module classes -------------------------------------------------
PANEL_FILES = [*MODULE_FILES, REPO / "MedAICommon" / "MedAICommonLib" / "application" / "slicer_widget.py"]


def inherited_uses() -> list[tuple[str, str, str, str]]:
    """``(file, class, Slicer base "module.Class", member)`` for each ``self.X`` a panel class uses but does not
    define itself (nor through a MedAI base class)."""
    trees = {path: ast.parse(path.read_text()) for path in PANEL_FILES}
    local = {n.name: n for tree in trees.values() for n in tree.body if isinstance(n, ast.ClassDef)}

    def own(node: ast.ClassDef) -> tuple[set[str], list[str]]:
        names = {i.name for i in node.body if isinstance(i, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign))
                 and hasattr(i, "name")}
        names |= {t.id for i in node.body if isinstance(i, ast.Assign) for t in i.targets if isinstance(t, ast.Name)}
        names |= {a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute) and isinstance(a.ctx, ast.Store)
                  and isinstance(a.value, ast.Name) and a.value.id == "self"}
        slicer_bases = []
        for base in node.bases:
            name = getattr(base, "id", getattr(base, "attr", ""))
            if name in local:
                inherited, more = own(local[name])
                names |= inherited
                slicer_bases += more
            elif name.startswith("ScriptedLoadableModule"):
                slicer_bases.append(f"ScriptedLoadableModule.{name}")
            elif name == "VTKObservationMixin":
                slicer_bases.append("util.VTKObservationMixin")
        return names, slicer_bases

    found = []
    for path, tree in trees.items():
        for node in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            defined, bases = own(node)
            used = {a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name)
                    and a.value.id == "self" and isinstance(a.ctx, ast.Load)}
            found += [(path.name, node.name, base, member) for member in sorted(used - defined) for base in bases]
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_inherited_members_exist_in_slicer_base_classes(folder):
    """``self.resourcePath``, ``self.addObserver``, ``self.delayDisplay`` ... exist in the Slicer base class."""
    uses = inherited_uses()
    assert any(member == "resourcePath" for *_, member in uses)
    widget = ref.class_members(folder, "ScriptedLoadableModule", "ScriptedLoadableModuleWidget")
    assert {"resourcePath", "layout", "parent"} <= widget
    assert "delayDisplay" not in widget
    assert "assertEqual" in ref.class_members(folder, "ScriptedLoadableModule", "ScriptedLoadableModuleTest")
    by_class: dict[tuple[str, str], set[str]] = {}
    for file, cls, base, member in uses:
        by_class.setdefault((file, cls), set())
        module, name = base.split(".")
        members = ref.class_members(folder, module, name)
        assert members is not None, f"{base} does not exist"
        if member in members:
            by_class[(file, cls)].add(member)
    missing = {(file, cls, member) for file, cls, _, member in uses if member not in by_class[(file, cls)]}
    assert missing == set()


def ui_parameter_widgets(module: str) -> dict[str, str]:
    """Parameter name -> widget class of each .ui widget with a ``SlicerParameterName``."""
    path = REPO / module / "Resources" / "UI" / f"{module}.ui"
    if not path.is_file():
        return {}
    found = {}
    for widget in ET.parse(path).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                found[prop.find("string").text] = widget.get("class")
    return found


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("module_file", MODULE_FILES, ids=MODULES)
def test_ui_widgets_have_a_gui_connector_for_their_parameter(folder, module_file):
    """``connectGui`` binds each .ui widget to its parameter only if a connector of that version represents the
    (widget class, annotation) pair: a path in a QLineEdit or a float in a QSpinBox would fail at panel start."""
    widgets = ui_parameter_widgets(module_file.stem)
    annotations = parameter_annotations(module_file)
    unbound = {name: cls for name, cls in widgets.items()
               if name in annotations and ref.connector_for(folder, slicer, cls, annotations[name]) is None}
    assert unbound == {}
    assert ref.connector_for(folder, slicer, "QSpinBox", float) is None
    assert ref.connector_for(folder, slicer, "qMRMLNodeComboBox", str) is None
    assert ref.connector_for(folder, slicer, "ctkPathLineEdit", pathlib.Path) is not None
