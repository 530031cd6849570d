"""Headless runtime: a real MRML scene that behaves as in Slicer, with or without Slicer.

Inside the Slicer application (``slicer.app`` exists) :func:`get_scene` returns the
application's ``slicer.mrmlScene``. Outside it, :func:`create_runtime` builds a scene that needs only
what Slicer's ``PythonSlicer`` has (the kits of ``Base/Python/CMakeLists.txt``: MRML core and logic,
vtkSegmentationCore, the base application logic): the application logic and the segmentation
converter rules (binary labelmap <-> closed surface, fractional labelmap) that Slicer's Segmentations
module registers. Background jobs run in PythonSlicer, so nothing MedAI does on a scene may need more.

Where the interpreter also has Slicer's module logics (the ``slicer-core`` wheel: pytest, the
``medai`` CLI), they are attached too (colours, segmentations, markups, ...), so that
``slicer.util`` helpers such as ``arrayFromSegmentBinaryLabelmap`` work on the headless scene as in
Slicer; MedAI's own code never calls them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import slicer
import vtk

_LOGIC_CLASSES = {
    # module name as Slicer registers it -> logic class name (present in slicer-core, absent in PythonSlicer)
    "Colors": "vtkSlicerColorLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Models": "vtkSlicerModelsLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Transforms": "vtkSlicerTransformLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Plots": "vtkSlicerPlotsLogic",
}

CONVERTER_RULES = (
    # the rules qSlicerSegmentationsModule registers, all in vtkSegmentationCore
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def in_slicer_application() -> bool:
    """True when running inside the Slicer application (GUI or ``--no-main-window``)."""
    return hasattr(slicer, "app")


def module_logics_available() -> bool:
    """True when this interpreter's ``slicer`` has Slicer's module logics (slicer-core; not PythonSlicer)."""
    return all(hasattr(slicer, class_name) for class_name in _LOGIC_CLASSES.values())


def register_converter_rules() -> None:
    """Register Slicer's segmentation converter rules once per process (as the Segmentations module does).

    A segmentation copies the registered rules when it is created, so this runs before any scene is made.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for class_name in CONVERTER_RULES:
        if class_name not in present:
            factory.RegisterConverterRule(getattr(slicer, class_name)())


@dataclass
class HeadlessRuntime:
    """A scene plus its application logic, and Slicer's module logics where the interpreter has them."""

    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)

    def logic(self, module_name: str):
        """The logic of a Slicer module (e.g. ``"Segmentations"``) bound to this scene.

        Raises ``KeyError`` in PythonSlicer, which has no module logics.
        """
        if module_name not in self.logics:
            raise KeyError(
                f"No {module_name} module logic in this interpreter (PythonSlicer has none); "
                "use MedAICommonLib.bridge instead."
            )
        return self.logics[module_name]

    def clear(self) -> None:
        """Remove all data nodes (like File > Close Scene)."""
        self.scene.Clear(False)


def _attach_module_logics(scene, app_logic) -> dict:
    # The colour logic reports (harmlessly) that the application's colour-file folder is unset.
    logics = {}
    warnings_were_on = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        for module_name, class_name in _LOGIC_CLASSES.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            app_logic.SetModuleLogic(module_name, logic)
            logics[module_name] = logic
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings_were_on)
    return logics


def create_runtime(module_logics: bool | None = None) -> HeadlessRuntime:
    """Create a new headless MRML scene with its application logic and the segmentation converter rules.

    ``module_logics``: attach Slicer's module logics too (default: when the interpreter has them;
    False gives exactly what a PythonSlicer worker has).
    """
    register_converter_rules()
    scene = slicer.vtkMRMLScene()
    # Slicer 5.8's PythonSlicer does not load the base-logic kit (its `from logic import *` fails), so
    # MRML's own application logic stands in there.
    app_logic_class = getattr(slicer, "vtkSlicerApplicationLogic", None) or slicer.vtkMRMLApplicationLogic
    app_logic = app_logic_class()
    app_logic.SetMRMLScene(scene)
    if module_logics is None:
        module_logics = module_logics_available()
    logics = _attach_module_logics(scene, app_logic) if module_logics else {}
    return HeadlessRuntime(scene=scene, app_logic=app_logic, logics=logics)


_default_runtime: HeadlessRuntime | None = None
_lock = threading.Lock()


class _ModuleHandle:
    """Stands for ``slicer.modules.<name>`` outside Slicer: gives access to the module's logic."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        """The module logic bound to the headless scene."""
        return self._logic


def install_as_default(runtime: HeadlessRuntime) -> None:
    """Make ``runtime`` what ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` refer to.

    With it, ``slicer.util`` helpers (``getNode``, ``arrayFromVolume``,
    ``arrayFromSegmentBinaryLabelmap``, ...) work on the headless scene as they do in Slicer.
    Never used inside the Slicer application, whose own scene and modules stay untouched.
    """
    if in_slicer_application():
        raise RuntimeError("Inside Slicer the application's scene is used; do not install a headless runtime")
    slicer.mrmlScene = runtime.scene
    if runtime.logics:  # PythonSlicer keeps its empty slicer.modules
        slicer.modules = SimpleNamespace(
            **{name.lower(): _ModuleHandle(logic) for name, logic in runtime.logics.items()}
        )


def get_runtime() -> HeadlessRuntime:
    """The process-wide headless runtime (created on first use, installed as ``slicer.mrmlScene``)."""
    global _default_runtime
    with _lock:
        if _default_runtime is None:
            _default_runtime = create_runtime()
            install_as_default(_default_runtime)
        return _default_runtime


def get_scene():
    """The scene to work in: Slicer's ``slicer.mrmlScene`` in the application, else the headless one."""
    if in_slicer_application():
        return slicer.mrmlScene
    return get_runtime().scene
