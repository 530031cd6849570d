"""Headless runtime: a real MRML scene with Slicer's module logics, with or without Slicer.

Inside the Slicer application (``slicer.app`` exists) :func:`get_scene` returns the
application's ``slicer.mrmlScene``. Outside it (the ``slicer-core`` wheel: batch runs,
pytest), :func:`create_scene` builds a scene wired to the same C++ logics Slicer uses
(application logic, colours, segmentations with their converter rules, markups, models,
volumes, transforms, tables, plots, subject hierarchy), so segment
conversions, storage nodes and ``slicer.util`` array helpers behave as in Slicer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import slicer
import vtk

_LOGIC_CLASSES = {
    # module name as Slicer registers it -> logic class name in slicer-core
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


def in_slicer_application() -> bool:
    """True when running inside the Slicer application (GUI or ``--no-main-window``)."""
    return hasattr(slicer, "app")


@dataclass
class HeadlessRuntime:
    """A scene plus the application and module logics that keep it behaving like Slicer's."""

    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)

    def logic(self, module_name: str):
        """The logic of a Slicer module (e.g. ``"Segmentations"``) bound to this scene."""
        return self.logics[module_name]

    def clear(self) -> None:
        """Remove all data nodes (like File > Close Scene)."""
        self.scene.Clear(False)


def create_runtime() -> HeadlessRuntime:
    """Create a new headless MRML scene with Slicer's module logics registered."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    # Instantiating the factory registers the default segmentation converter rules
    # (binary labelmap <-> closed surface, fractional labelmap), as qSlicerSegmentationsModule does.
    slicer.vtkSegmentationConverterFactory.GetInstance()
    logics = {}
    # The colour logic reports (harmlessly) that the application's colour-file folder is
    # unset; terminology files are not part of slicer-core, so segments carry terminology
    # entries as strings instead (as Slicer stores them).
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
    slicer.modules = SimpleNamespace(**{name.lower(): _ModuleHandle(logic) for name, logic in runtime.logics.items()})


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


def segmentations_logic(scene=None):
    """Slicer's Segmentations module logic for ``scene`` (application or headless)."""
    if in_slicer_application():
        return slicer.modules.segmentations.logic()
    runtime = get_runtime()
    if scene is not None and scene is not runtime.scene:
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        return logic
    return runtime.logic("Segmentations")
