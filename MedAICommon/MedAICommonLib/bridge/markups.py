"""Markups nodes <-> (N, 3) arrays of RAS points (mm)."""

from __future__ import annotations

import numpy as np

from .errors import BridgeError
from .nodes import parent_to_world_matrix


def points_from_markups(node, world: bool = True) -> np.ndarray:
    """Control points of a markups node as an (N, 3) RAS array (world coordinates by default)."""
    if node is None or not node.IsA("vtkMRMLMarkupsNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise BridgeError(f"Expected a markups node, got {kind}.")
    count = node.GetNumberOfControlPoints()
    points = np.zeros((count, 3))
    for index in range(count):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        points[index] = position
    if world and count:
        m = parent_to_world_matrix(node)
        points = points @ m[:3, :3].T + m[:3, 3]
    return points


def point_labels(node) -> list[str]:
    """Labels of the control points, in order."""
    return [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]


def create_markups(
    scene,
    points: np.ndarray,
    name: str,
    labels: list[str] | None = None,
    node=None,
    class_name: str = "vtkMRMLMarkupsFiducialNode",
):
    """Create (or update, replacing its points) a markups node from (N, 3) RAS points."""
    points = np.atleast_2d(np.asarray(points, dtype=float)) if len(points) else np.zeros((0, 3))
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise BridgeError(f"Markup points must be finite (N, 3) RAS coordinates, got shape {points.shape}")
    if labels is not None and len(labels) != len(points):
        raise BridgeError(f"{len(labels)} labels for {len(points)} points")
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        node.CreateDefaultDisplayNodes()
    else:
        node.RemoveAllControlPoints()
    for index, point in enumerate(points):
        label = labels[index] if labels is not None else f"{name}-{index + 1}"
        node.AddControlPoint(point.tolist(), label)
    return node
