"""Model nodes <-> vtkPolyData (RAS) and point arrays."""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import BridgeError
from .nodes import parent_to_world_matrix, vtk_matrix_from_array


def polydata_from_model(node, world: bool = True) -> vtk.vtkPolyData:
    """A copy of a model node's mesh in RAS (world coordinates by default)."""
    if node is None or not node.IsA("vtkMRMLModelNode") or node.GetPolyData() is None:
        raise BridgeError("Expected a model node with a mesh.")
    polydata = vtk.vtkPolyData()
    polydata.DeepCopy(node.GetPolyData())
    if world:
        matrix = parent_to_world_matrix(node)
        if not np.allclose(matrix, np.eye(4)):
            transform = vtk.vtkTransform()
            transform.SetMatrix(vtk_matrix_from_array(matrix))
            f = vtk.vtkTransformPolyDataFilter()
            f.SetTransform(transform)
            f.SetInputData(polydata)
            f.Update()
            polydata = f.GetOutput()
    return polydata


def points_from_polydata(polydata: vtk.vtkPolyData) -> np.ndarray:
    """(N, 3) array of a mesh's points."""
    if polydata.GetPoints() is None:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float).copy()


def create_model(scene, polydata: vtk.vtkPolyData, name: str, node=None, color=None):
    """Create (or update) a model node showing ``polydata`` (RAS)."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        node.CreateDefaultDisplayNodes()
    node.SetAndObservePolyData(polydata)
    if color is not None and node.GetDisplayNode() is not None:
        node.GetDisplayNode().SetColor(*color)
    return node
