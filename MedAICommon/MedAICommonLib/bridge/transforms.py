"""Linear transform nodes <-> 4x4 RAS matrices <-> SimpleITK transforms.

Conventions, the classic trap:

* A Slicer transform node's **to-parent** matrix maps points of a node placed under it to the
  parent (world) frame, in RAS. Placing a *moving* volume under the node aligns it with the
  *fixed* volume when to-parent maps moving RAS -> fixed RAS.
* An ITK/SimpleITK registration transform maps **fixed (output) LPS points -> moving LPS points**
  (the resampling convention); Slicer stores transform files in that same "from parent"
  convention, so the file of the aligning node holds exactly ITK's transform.

Hence ``to_parent_RAS = inverse(flip @ M_itk @ flip)`` where ``flip = diag(-1, -1, 1, 1)``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..geometry import lps_to_ras_matrix4, ras_to_lps_matrix4
from .errors import BridgeError
from .nodes import matrix_from_vtk, vtk_matrix_from_array


def sitk_to_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 LPS matrix of a linear SimpleITK transform (maps fixed -> moving points).

    Works for any linear transform (Euler, versor, similarity, affine, translation, scale,
    composites of them) by probing it at the origin and the unit axes, which is exact for
    affine maps.
    """
    if transform.GetDimension() != 3:
        raise BridgeError(f"Expected a 3D transform, got {transform.GetDimension()}D")
    if not transform.IsLinear():
        raise BridgeError(f"{transform.GetName()} is not linear; use a grid/B-spline transform node instead")
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - origin
    matrix[:3, 3] = origin
    return matrix


def matrix_to_sitk(matrix_lps: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK affine transform from a 4x4 LPS matrix."""
    matrix_lps = np.asarray(matrix_lps, dtype=float)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(matrix_lps[:3, :3].ravel()))
    affine.SetTranslation(tuple(matrix_lps[:3, 3]))
    return affine


def itk_to_to_parent_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """To-parent RAS matrix of the node that aligns moving with fixed, from ITK's fixed->moving LPS matrix."""
    return np.linalg.inv(lps_to_ras_matrix4(matrix_lps))


def to_parent_ras_to_itk(matrix_ras: np.ndarray) -> np.ndarray:
    """ITK's fixed->moving LPS matrix from a node's to-parent RAS matrix (inverse of the above)."""
    return ras_to_lps_matrix4(np.linalg.inv(np.asarray(matrix_ras, dtype=float)))


def require_linear_transform(node, role: str = "transform") -> None:
    """Raise unless ``node`` is a transform node that is linear."""
    if node is None or not node.IsA("vtkMRMLTransformNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise BridgeError(f"The {role} must be a transform node, got {kind}.")
    if not node.IsLinear():
        raise BridgeError(f"The {role} '{node.GetName()}' is not linear.")


def matrix_from_transform_node(node) -> np.ndarray:
    """4x4 to-parent RAS matrix of a linear transform node."""
    require_linear_transform(node)
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(m)
    return matrix_from_vtk(m)


def create_linear_transform(scene, matrix_ras: np.ndarray, name: str, node=None):
    """Create (or update) a linear transform node with the given to-parent RAS matrix."""
    matrix_ras = np.asarray(matrix_ras, dtype=float)
    if matrix_ras.shape != (4, 4) or not np.all(np.isfinite(matrix_ras)):
        raise BridgeError("A linear transform needs a finite 4x4 matrix")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix_from_array(matrix_ras))
    return node


def sitk_to_transform_node(transform: sitk.Transform, scene, name: str, node=None):
    """Transform node that aligns the moving node (as its child) with the fixed one, from ITK's transform."""
    return create_linear_transform(scene, itk_to_to_parent_ras(sitk_to_matrix(transform)), name, node)


def transform_node_to_sitk(node) -> sitk.AffineTransform:
    """ITK fixed->moving (LPS) affine transform equivalent to a linear transform node."""
    return matrix_to_sitk(to_parent_ras_to_itk(matrix_from_transform_node(node)))


def set_fixed_moving_references(transform_node, fixed_node, moving_node) -> None:
    """Record on the transform node which nodes it registered (as Slicer's registration modules do)."""
    if fixed_node is not None:
        transform_node.SetNodeReferenceID("fixed", fixed_node.GetID())
    if moving_node is not None:
        transform_node.SetNodeReferenceID("moving", moving_node.GetID())


def transform_points_ras(matrix_ras: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 RAS matrix to (N, 3) RAS points."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    return points @ matrix_ras[:3, :3].T + matrix_ras[:3, 3]
