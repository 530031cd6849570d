"""Slicer's markups JSON files (``.mrk.json``) for point-based markups, with MRML core only.

Slicer reads and writes these files with ``vtkMRMLMarkupsJsonStorageNode``, which lives in the Markups
module's library and so is absent from ``PythonSlicer`` (where MedAI's workers run). This module
reads and writes the same schema for point lists, lines, angles and curves: control points (position
in the file's coordinate system, LPS by default, stored as RAS in the node), labels, descriptions and
position status. Display properties other than the colour are left to Slicer's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import BridgeError

SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.4.json#"
)

NODE_CLASSES = {
    "Fiducial": "vtkMRMLMarkupsFiducialNode",
    "Line": "vtkMRMLMarkupsLineNode",
    "Angle": "vtkMRMLMarkupsAngleNode",
    "Curve": "vtkMRMLMarkupsCurveNode",
    "ClosedCurve": "vtkMRMLMarkupsClosedCurveNode",
}
"""Markups types (the file's ``type``) read and written here, and their MRML node classes."""

_STATUS_NAMES = ("undefined", "preview", "defined", "missing")  # vtkMRMLMarkupsNode::PositionStatus order


def _flip(position, system: str) -> list[float]:
    x, y, z = (float(v) for v in position)
    return [-x, -y, z] if system == "LPS" else [x, y, z]


def read_markups_json(scene, path, name: str):
    """A new markups node from the first markup of a ``.mrk.json`` file (points stored in RAS)."""
    try:
        document = json.loads(Path(path).read_text())
        markup = document["markups"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise BridgeError(f"Could not read {path} as a markups file (.mrk.json): {error}") from error
    kind = markup.get("type", "Fiducial")
    if kind not in NODE_CLASSES:
        raise BridgeError(
            f"{path} holds a {kind} markup; MedAI reads point lists, lines, angles and curves "
            f"({', '.join(NODE_CLASSES)})."
        )
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise BridgeError(f"{path}: unknown coordinate system {system!r} (LPS or RAS).")
    node = scene.AddNewNodeByClass(NODE_CLASSES[kind], name)
    node.CreateDefaultDisplayNodes()
    for index, point in enumerate(markup.get("controlPoints", [])):
        position = point.get("position")
        known = isinstance(position, list) and len(position) == 3  # Slicer writes "" for a missing point
        node.AddControlPoint(_flip(position, system) if known else [0.0, 0.0, 0.0], str(point.get("label", "")))
        node.SetNthControlPointDescription(index, str(point.get("description", "")))
        status = point.get("positionStatus", "defined" if known else "undefined")
        if status == "missing":
            node.SetNthControlPointPositionMissing(index)
        elif status == "undefined" or not known:
            node.UnsetNthControlPointPosition(index)
    color = markup.get("display", {}).get("color")
    if color is not None and node.GetDisplayNode() is not None:
        node.GetDisplayNode().SetColor(*[float(c) for c in color])
    return node


def write_markups_json(node, path) -> None:
    """Write a point-based markups node to ``path`` as Slicer does (positions in LPS)."""
    kind = next((k for k, class_name in NODE_CLASSES.items() if node.GetClassName() == class_name), None)
    if kind is None:
        raise BridgeError(
            f"Saving a {node.GetClassName()} as .mrk.json is not supported; MedAI writes point "
            f"lists, lines, angles and curves."
        )
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        points.append(
            {
                "id": node.GetNthControlPointID(index),
                "label": node.GetNthControlPointLabel(index),
                "description": node.GetNthControlPointDescription(index),
                "position": _flip(position, "LPS"),
                "positionStatus": _STATUS_NAMES[node.GetNthControlPointPositionStatus(index)],
            }
        )
    markup = {
        "type": kind,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "controlPoints": points,
        "measurements": [],
    }
    display = node.GetDisplayNode()
    if display is not None:
        markup["display"] = {"color": list(display.GetColor())}
    Path(path).write_text(json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=4))
