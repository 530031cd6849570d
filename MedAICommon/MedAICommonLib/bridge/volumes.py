"""Volume nodes <-> numpy arrays (KJI) + Geometry (RAS) <-> SimpleITK images (LPS).

The only place where MRML volume geometry is read or written. Arrays are always copies, so
an algorithm can never modify an input node by accident.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from ..geometry import Geometry
from .errors import BridgeError
from .nodes import matrix_from_vtk, parent_to_world_matrix, vtk_matrix_from_array

SCALAR_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")


def require_scalar_volume(node, role: str = "input volume") -> None:
    """Raise :class:`BridgeError` unless ``node`` is a scalar or label-map volume with voxels."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise BridgeError(f"The {role} must be a scalar volume node, got {kind}; select a volume.")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise BridgeError(f"The {role} '{node.GetName()}' has no voxels; load image data into it first.")
    if image.GetNumberOfScalarComponents() != 1:
        raise BridgeError(
            f"The {role} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
            "convert it to a scalar volume (e.g. Vector to Scalar Volume) first."
        )
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    if np.issubdtype(values.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise BridgeError(
                f"The {role} '{node.GetName()}' has {bad} NaN or infinite voxel(s); replace them "
                "(e.g. with the background value) before processing."
            )
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        if peak > EXTREME_INTENSITY:
            raise BridgeError(
                f"The {role} '{node.GetName()}' has intensities up to {peak:.3g}, beyond any image "
                "unit (HU, MR, Gy); rescale it to its physical range first."
            )


EXTREME_INTENSITY = 1e12
"""Magnitudes above this are refused as corrupt or unscaled data (no medical image unit comes close)."""


def require_volume_extent(node, min_voxels: int = 4, role: str = "input volume") -> None:
    """Raise unless the volume has at least ``min_voxels`` voxels along every axis (3D methods need it)."""
    dims = node.GetImageData().GetDimensions()
    if min(dims) < min_voxels:
        raise BridgeError(
            f"The {role} '{node.GetName()}' is {dims[0]}x{dims[1]}x{dims[2]} voxels; this needs at "
            f"least {min_voxels} along each axis (a 3D volume, not a single slice)."
        )


def require_overlap(node_a, node_b, what: str = "volumes", warn_partial: bool = False) -> None:
    """Raise unless the two volumes' physical extents (world RAS) intersect; the error gives both extents
    in mm. With ``warn_partial``, a partial overlap is a warning with the share of ``node_a`` covered."""
    require_grids_overlap(
        volume_geometry(node_a), volume_geometry(node_b), node_a.GetName(), node_b.GetName(), what, warn_partial
    )


def require_grids_overlap(
    a: Geometry, b: Geometry, name_a: str, name_b: str, what: str, warn_partial: bool = True
) -> float:
    """Share (0..1) of grid ``a``'s RAS bounding box inside grid ``b``'s; ``BridgeError`` naming both boxes
    (mm) when they do not intersect, a warning when ``warn_partial`` and the share is below 99.9 %."""
    fraction = grid_overlap_fraction(a, b)
    if fraction <= 0.0 or not grids_overlap(a, b):
        raise BridgeError(
            f"The {what} '{name_a}' and '{name_b}' do not overlap in space: '{name_a}' spans "
            f"{describe_bounds(a)}, '{name_b}' spans {describe_bounds(b)} (RAS mm); check that "
            "they share a frame of reference (or align them first)."
        )
    if warn_partial and fraction < 0.999:
        from ..notices import warn

        warn(
            f"The {what} overlap only partly: {100.0 * fraction:.1f} % of '{name_a}' ({describe_bounds(a)}) lies "
            f"within '{name_b}' ({describe_bounds(b)}, RAS mm); results cover the overlap only."
        )
    return fraction


def grid_bounds_ras(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned RAS bounding box (lo, hi; mm) of a grid's voxels, voxel edges included (needs a shape)."""
    geometry = geometry.to_space("RAS")
    k, j, i = (n - 1 for n in geometry.shape_kji)
    corners = np.array([[x, y, z] for x in (-0.5, i + 0.5) for y in (-0.5, j + 0.5) for z in (-0.5, k + 0.5)])
    points = geometry.index_to_point(corners)
    return points.min(axis=0), points.max(axis=0)


def describe_bounds(geometry: Geometry) -> str:
    """'R lo..hi, A lo..hi, S lo..hi' of a grid's RAS bounding box (mm)."""
    lo, hi = grid_bounds_ras(geometry)
    return ", ".join(f"{axis} {a:.1f}..{b:.1f}" for axis, a, b in zip("RAS", lo, hi))


def grid_overlap_fraction(a: Geometry, b: Geometry) -> float:
    """Share (0..1) of the RAS bounding box of grid ``a`` that lies inside that of grid ``b``."""
    (lo_a, hi_a), (lo_b, hi_b) = grid_bounds_ras(a), grid_bounds_ras(b)
    size = np.maximum(hi_a - lo_a, 1e-9)
    inside = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0.0, None)
    return float(np.prod(np.minimum(inside / size, 1.0)))


def grids_overlap(a: Geometry, b: Geometry) -> bool:
    """True when the axis-aligned RAS bounding boxes of two grids (with shapes) intersect."""
    (lo_a, hi_a), (lo_b, hi_b) = grid_bounds_ras(a), grid_bounds_ras(b)
    return bool(np.all(lo_a <= hi_b) and np.all(lo_b <= hi_a))


def volume_geometry(node, world: bool = True) -> Geometry:
    """Geometry (RAS) of a volume node; with ``world``, linear parent transforms are applied."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    m = matrix_from_vtk(ijk_to_ras)
    if world:
        m = parent_to_world_matrix(node) @ m
    dims = node.GetImageData().GetDimensions() if node.GetImageData() else (0, 0, 0)
    return Geometry.from_ijk_to_physical(m, "RAS", (dims[2], dims[1], dims[0]))


def array_from_volume(node, world: bool = True) -> tuple[np.ndarray, Geometry]:
    """A copy of the voxels as a KJI array and the volume's RAS geometry."""
    require_scalar_volume(node)
    image = node.GetImageData()
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0]).copy(), volume_geometry(node, world)


def _image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise BridgeError(f"A volume needs a 3D array (k, j, i), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def update_volume(node, array: np.ndarray, geometry: Geometry) -> None:
    """Replace the voxels and geometry of ``node`` (RAS geometry, local to the node)."""
    node.SetAndObserveImageData(_image_data_from_array(array))
    node.SetIJKToRASMatrix(vtk_matrix_from_array(geometry.to_space("RAS").ijk_to_physical()))
    node.Modified()


def create_volume(scene, array: np.ndarray, geometry: Geometry, name: str, labelmap: bool = False, node=None):
    """Create (or, given ``node``, update) a scalar/label-map volume node with display nodes."""
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        node.CreateDefaultDisplayNodes()
    elif not node.IsA(class_name):
        raise BridgeError(f"Cannot store a {'label map' if labelmap else 'scalar volume'} in {node.GetClassName()}")
    update_volume(node, array, geometry)
    display = node.GetDisplayNode()
    if display is not None and not labelmap and display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        display.AutoWindowLevelOn()
    return node


def volume_to_sitk(node, world: bool = True) -> sitk.Image:
    """A SimpleITK image (LPS) with the volume's voxels and physical geometry."""
    array, geometry = array_from_volume(node, world)
    return array_to_sitk(array, geometry)


def array_to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image from a KJI array and a geometry in RAS or LPS."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to_sitk(image)
    return image


def sitk_to_array(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """KJI array copy and RAS geometry of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise BridgeError(f"Expected a 3D image, got {image.GetDimension()}D")
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image).to_space("RAS")


def sitk_to_volume(image: sitk.Image, scene, name: str, labelmap: bool = False, node=None):
    """Create (or update) a volume node from a SimpleITK image (LPS -> RAS)."""
    array, geometry = sitk_to_array(image)
    return create_volume(scene, array, geometry, name, labelmap=labelmap, node=node)


def resample_array(
    array: np.ndarray,
    geometry: Geometry,
    reference: Geometry,
    interpolator=sitk.sitkLinear,
    default_value: float = 0.0,
    transform: sitk.Transform | None = None,
) -> np.ndarray:
    """Resample a KJI array from ``geometry`` onto the ``reference`` grid (needs ``shape_kji``).

    ``transform`` follows ITK's convention: it maps reference (output) LPS points to input points.
    """
    if reference.shape_kji is None:
        raise BridgeError("The reference geometry needs a shape to resample onto")
    image = array_to_sitk(array, geometry)
    ref = sitk.Image([int(s) for s in reference.shape_kji[::-1]], image.GetPixelID())
    reference.apply_to_sitk(ref)
    out = sitk.Resample(image, ref, transform or sitk.Transform(), interpolator, default_value, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def is_labelmap(node) -> bool:
    """True for label-map volume nodes."""
    return bool(node is not None and node.IsA("vtkMRMLLabelMapVolumeNode"))


__all__ = [
    "SCALAR_VOLUME_CLASSES",
    "array_from_volume",
    "array_to_sitk",
    "create_volume",
    "describe_bounds",
    "grid_bounds_ras",
    "grid_overlap_fraction",
    "grids_overlap",
    "is_labelmap",
    "require_grids_overlap",
    "require_overlap",
    "require_scalar_volume",
    "require_volume_extent",
    "resample_array",
    "sitk_to_array",
    "sitk_to_volume",
    "update_volume",
    "volume_geometry",
    "volume_to_sitk",
]
