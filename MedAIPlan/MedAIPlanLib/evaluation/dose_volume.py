"""SlicerRT's conventions for dose volumes, so SlicerRT's modules accept MedAI's dose nodes.

SlicerRT (``SlicerRtCommon/vtkSlicerRtCommon.cxx``) recognises a dose volume by the node attribute
``DicomRtImport.DoseVolume`` (value "1"); the dose unit is stored as ``DicomRtImport.DoseUnitName``
("Gy") and ``DicomRtImport.DoseUnitValue`` (Gy per stored unit, "1.0") on the study item in the
subject hierarchy (and, here, on the node itself too, so it travels without a hierarchy). Dose is
displayed with a colour table named ``Dose_ColorTable`` (blue -> green -> yellow -> red).

This module works on MRML node objects through their own methods only; it imports neither
``slicer`` nor ``qt``.
"""

from __future__ import annotations

DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"
DOSE_COLOR_TABLE_NAME = "Dose_ColorTable"

# Colour ramp control points (fraction of the range, RGB) for the dose colour table.
_RAMP = (
    (0.0, (0.0, 0.0, 1.0)),
    (0.25, (0.0, 1.0, 1.0)),
    (0.5, (0.0, 1.0, 0.0)),
    (0.75, (1.0, 1.0, 0.0)),
    (1.0, (1.0, 0.0, 0.0)),
)


def _ramp_color(t: float) -> tuple[float, float, float]:
    for (t0, c0), (t1, c1) in zip(_RAMP[:-1], _RAMP[1:]):
        if t <= t1:
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return tuple(a + w * (b - a) for a, b in zip(c0, c1))
    return _RAMP[-1][1]


def dose_color_table(scene, number_of_colors: int = 256):
    """The scene's ``Dose_ColorTable`` colour table node (created once, then reused)."""
    existing = scene.GetFirstNodeByName(DOSE_COLOR_TABLE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DOSE_COLOR_TABLE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(number_of_colors)
    for i in range(number_of_colors):
        r, g, b = _ramp_color(i / max(number_of_colors - 1, 1))
        node.SetColor(i, f"{i}", r, g, b, 1.0)
    node.SetAttribute("Category", "SlicerRT")
    return node


def _study_item(scene, node):
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return None, None
    item = sh.GetItemByDataNode(node)
    if not item:
        return sh, None
    parent = sh.GetItemParent(item)
    return sh, (parent if parent and parent != sh.GetSceneItemID() else None)


def mark_as_dose_volume(node, unit: str = "Gy", unit_value: float = 1.0, color: bool = True):
    """Mark a scalar volume node as a dose volume the way SlicerRT does; returns the node.

    Sets ``DicomRtImport.DoseVolume`` = "1", the dose unit name/value attributes on the node and on
    its parent (study) subject-hierarchy item when it has one, and displays the volume with the
    ``Dose_ColorTable`` over 0..max dose. The voxel values are not changed.
    """
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise ValueError(f"Only a scalar volume can be marked as a dose volume, got {kind}.")
    node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    node.SetAttribute(DOSE_UNIT_NAME_ATTRIBUTE, str(unit))
    node.SetAttribute(DOSE_UNIT_VALUE_ATTRIBUTE, repr(float(unit_value)))
    scene = node.GetScene()
    if scene is None:
        return node
    sh, study = _study_item(scene, node)
    if sh is not None and study:
        sh.SetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE, str(unit))
        sh.SetItemAttribute(study, DOSE_UNIT_VALUE_ATTRIBUTE, repr(float(unit_value)))
    if color:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetAndObserveColorNodeID(dose_color_table(scene).GetID())
            image = node.GetImageData()
            if image is not None and image.GetNumberOfPoints():
                low, high = image.GetScalarRange()
                display.AutoWindowLevelOff()
                display.SetWindowLevelMinMax(min(0.0, low), max(high, 1e-6))
    return node


def is_dose_volume(node) -> bool:
    """True when ``node`` carries SlicerRT's dose-volume attribute."""
    return bool(node is not None and node.GetAttribute(DOSE_VOLUME_ATTRIBUTE) == "1")


def dose_unit(node, default: str = "Gy") -> str:
    """The dose unit name of a dose volume (node attribute, else its study item, else ``default``)."""
    value = node.GetAttribute(DOSE_UNIT_NAME_ATTRIBUTE) if node is not None else None
    if value:
        return value
    scene = node.GetScene() if node is not None else None
    if scene is not None:
        sh, study = _study_item(scene, node)
        if sh is not None and study:
            value = sh.GetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE)
            if value:
                return value
    return default
