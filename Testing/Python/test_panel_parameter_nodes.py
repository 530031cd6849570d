"""The panels' node parameters bind in every Slicer version: Slicer's own parameterNodeWrapper code (the
reference copies, run on slicer-core) builds the node combo box's class list and stores each node.

The GUI connector of a ``qMRMLNodeComboBox`` calls ``util.getNodeTypes(annotation)``, which instantiates every
annotated node class; an abstract class (the Register panel's old ``vtkMRMLDisplayableNode``) raises
``TypeError`` there, so ``connectGui`` failed and the panel never bound.
"""

import ast
import importlib
import sys
import types
import typing
from pathlib import Path

import pytest
import slicer

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference" / "slicer"
VERSIONS = ("v5.8.1", "v5.10.0", "v5.12.3", "main-2026-08-21")
MODULES = ("MedAISeg", "MedAIRegister", "MedAIPlan")


def reference_module(version: str, name: str):
    """Slicer's ``parameterNodeWrapper.<name>`` of ``version``, imported from the reference copy."""
    folder = REFERENCE / version / "Base" / "Python" / "slicer" / "parameterNodeWrapper"
    if not folder.is_dir():
        pytest.skip(f"Slicer reference {version} not found at {folder}")
    package_name = "medai_reference_pnw_" + version.replace(".", "_").replace("-", "_")
    if package_name not in sys.modules:
        package = types.ModuleType(package_name)
        package.__path__ = [str(folder)]
        sys.modules[package_name] = package
    return importlib.import_module(f"{package_name}.{name}")


def node_annotations(module: str) -> dict[str, object]:
    """``{field: annotation}`` of the parameter node's MRML-node fields, evaluated as Slicer would see them."""
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    namespace = {"Union": typing.Union, "Optional": typing.Optional, "typing": typing}
    namespace.update({n: getattr(slicer, n) for n in dir(slicer) if n.startswith("vtkMRML")})
    for node in tree.body:  # module-level aliases such as SurfaceNode = Union[...]
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                namespace[node.targets[0].id] = eval(ast.unparse(node.value), namespace)  # noqa: S307
            except Exception:  # noqa: BLE001, S112 - not an annotation alias
                continue
    parameters = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    fields = {}
    for item in parameters.body:
        if (
            isinstance(item, ast.AnnAssign)
            and "vtkMRML" in ast.unparse(item.annotation)
            or (
                isinstance(item, ast.AnnAssign)
                and ast.unparse(item.annotation) in namespace
                and typing.get_origin(namespace[ast.unparse(item.annotation)]) is typing.Union
            )
        ):
            fields[item.target.id] = eval(ast.unparse(item.annotation), namespace)  # noqa: S307
    return fields


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("module", MODULES)
def test_node_combo_boxes_can_bind_every_node_parameter(version, module):
    util = reference_module(version, "util")
    fields = node_annotations(module)
    assert fields
    for name, annotation in fields.items():
        assert util.isNodeOrUnionOfNodes(annotation), name
        assert all(c.startswith("vtkMRML") for c in util.getNodeTypes(annotation)), name  # instantiates each class


@pytest.mark.parametrize("module", MODULES)
def test_node_parameters_store_every_allowed_node_and_none(module, scene):
    """Slicer 5.8.1's serializers write and read back a node of every allowed class, and None. (Later versions'
    serializers import Qt for QColor, absent here; their node serializer is the same code and their union
    serializer differs only by also accepting ``A | B``.)"""
    util, serializers = reference_module("v5.8.1", "util"), reference_module("v5.8.1", "serializers")
    parameter_node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", f"{module} parameters")
    for name, annotation in node_annotations(module).items():
        serializer = serializers.createSerializerFromAnnotatedType(annotation)
        assert serializer.default() is None, name
        for class_name in util.getNodeTypes(annotation):
            node = scene.AddNewNodeByClass(class_name, f"{name} {class_name}")
            serializer.write(parameter_node, name, node)
            assert serializer.read(parameter_node, name) is node, (name, class_name)
        serializer.write(parameter_node, name, None)
        assert serializer.read(parameter_node, name) is None, name


@pytest.mark.parametrize("version", VERSIONS)
def test_register_surfaces_accept_models_markups_and_segmentations(version):
    util = reference_module(version, "util")
    surface = node_annotations("MedAIRegister")["fixedSurface"]
    assert set(util.getNodeTypes(surface)) == {
        "vtkMRMLModelNode",
        "vtkMRMLMarkupsFiducialNode",
        "vtkMRMLSegmentationNode",
    }
    with pytest.raises(TypeError):  # the annotation the panel had: abstract, so the connector cannot bind it
        util.getNodeTypes(slicer.vtkMRMLDisplayableNode)
