"""Small helpers shared by the bridge: VTK matrices, parent transforms, node lookup."""

from __future__ import annotations

import numpy as np
import vtk

from .errors import BridgeError


def matrix_from_vtk(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """4x4 numpy array from a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix_from_array(array) -> vtk.vtkMatrix4x4:
    """vtkMatrix4x4 from a 4x4 array-like."""
    array = np.asarray(array, dtype=float)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def parent_to_world_matrix(node) -> np.ndarray:
    """4x4 RAS matrix of the node's parent transforms (identity when it has none).

    Raises :class:`BridgeError` if a parent transform is not linear: harden it first.
    """
    parent = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise BridgeError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; "
            "harden the transform first (Data module > right-click > Harden transform)."
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return matrix_from_vtk(m)


def remove_nodes(scene, nodes) -> None:
    """Remove nodes (and their display/storage nodes) from the scene, ignoring None."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        if hasattr(node, "GetNumberOfDisplayNodes"):
            for i in reversed(range(node.GetNumberOfDisplayNodes())):
                dn = node.GetNthDisplayNode(i)
                if dn is not None:
                    scene.RemoveNode(dn)
        if hasattr(node, "GetNumberOfStorageNodes"):
            for i in reversed(range(node.GetNumberOfStorageNodes())):
                sn = node.GetNthStorageNode(i)
                if sn is not None:
                    scene.RemoveNode(sn)
        scene.RemoveNode(node)
