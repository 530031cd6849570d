"""Binary-labelmap layers of segmentations <-> KJI arrays, with vtkSegmentationCore only.

A segmentation stores each segment's voxels in a ``vtkOrientedImageData`` (its "Binary labelmap"
representation); segments that do not overlap share one image (a *layer*), each marked there by its
own label value. These helpers convert layers to and from arrays and pack masks into as few layers
as their overlaps allow, as Slicer's segmentation node does. They use only classes that Slicer's
``PythonSlicer`` has (MRML core and vtkSegmentationCore), so the same code runs in every process.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..geometry import Geometry
from .errors import BridgeError
from .nodes import matrix_from_vtk, vtk_matrix_from_array
from .volumes import resample_array

BINARY_LABELMAP = "Binary labelmap"
MAX_LABELS_PER_LAYER = 255
"""Label values a layer holds (its voxels are unsigned bytes)."""


def geometry_from_string(text: str) -> Geometry | None:
    """RAS geometry from Slicer's serialised image geometry (16 matrix values, then the extent).

    The extent may start away from index 0: the origin is moved to the extent's first voxel.
    None when ``text`` is empty.
    """
    if not text:
        return None
    values = [float(v) for v in text.split(";") if v.strip()]
    matrix = np.array(values[:16]).reshape(4, 4)
    extent = [int(v) for v in values[16:22]]
    shape = (max(extent[5] - extent[4] + 1, 0), max(extent[3] - extent[2] + 1, 0), max(extent[1] - extent[0] + 1, 0))
    matrix[:3, 3] = (matrix @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    return Geometry.from_ijk_to_physical(matrix, "RAS", shape)


def oriented_image_from_array(array: np.ndarray, geometry: Geometry):
    """A ``vtkOrientedImageData`` holding a copy of a KJI array on ``geometry`` (any space)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise BridgeError(f"A labelmap needs a 3D array (k, j, i), got shape {array.shape}")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    image.SetImageToWorldMatrix(vtk_matrix_from_array(geometry.to_space("RAS").ijk_to_physical()))
    return image


def array_from_oriented_image(image) -> tuple[np.ndarray, Geometry]:
    """A copy of a ``vtkOrientedImageData``'s voxels (KJI) and its RAS geometry (origin at its extent's start)."""
    extent = image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    matrix_vtk = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix_vtk)
    matrix = matrix_from_vtk(matrix_vtk)
    matrix[:3, 3] = (matrix @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    if min(shape) <= 0 or image.GetPointData().GetScalars() is None:
        return np.zeros((0, 0, 0), np.uint8), Geometry.from_ijk_to_physical(matrix, "RAS", (0, 0, 0))
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return values.reshape(shape).copy(), Geometry.from_ijk_to_physical(matrix, "RAS", shape)


def _integer_offset(source: Geometry, target: Geometry) -> np.ndarray | None:
    """(k, j, i) index of ``source``'s first voxel in ``target`` when both share one lattice, else None."""
    a, b = source.to_space("RAS"), target.to_space("RAS")
    if not (np.allclose(a.spacing, b.spacing, atol=1e-6) and np.allclose(a.direction, b.direction, atol=1e-6)):
        return None
    ijk = b.point_to_index(np.array(a.origin))
    if np.max(np.abs(ijk - np.round(ijk))) > 1e-3:
        return None
    return np.round(ijk[::-1]).astype(int)


def array_on_grid(array: np.ndarray, geometry: Geometry, target: Geometry) -> np.ndarray:
    """A label array moved onto ``target`` (with ``shape_kji``): copied when the lattices match, else
    nearest-neighbour resampled; voxels outside ``array`` are 0."""
    out = np.zeros(target.shape_kji, dtype=array.dtype)
    if array.size == 0:
        return out
    offset = _integer_offset(geometry, target)
    if offset is None:
        return resample_array(array, geometry, target, interpolator=sitk.sitkNearestNeighbor).astype(array.dtype)
    lo = np.maximum(offset, 0)
    hi = np.minimum(offset + np.array(array.shape), np.array(target.shape_kji))
    if np.any(hi <= lo):
        return out
    src_lo, src_hi = lo - offset, hi - offset
    out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = array[
        src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
    ]
    return out


def pack_layers(masks: list[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Pack boolean masks into as few uint8 label layers as their overlaps need (first fit, in order).

    Returns the layers and, per mask, ``(layer index, label value)``. Empty masks join the first
    layer with a label value of their own, as Slicer's empty segments do.
    """
    if not masks:
        return [], []
    shape = masks[0].shape
    layers: list[np.ndarray] = []
    used: list[np.ndarray] = []
    counts: list[int] = []
    places = []
    for mask in masks:
        index = next((n for n, u in enumerate(used) if counts[n] < MAX_LABELS_PER_LAYER and not np.any(u & mask)), None)
        if index is None:
            layers.append(np.zeros(shape, np.uint8))
            used.append(np.zeros(shape, bool))
            counts.append(0)
            index = len(layers) - 1
        counts[index] += 1
        layers[index][mask] = counts[index]
        used[index] |= mask
        places.append((index, counts[index]))
    return layers, places


def add_layer_segment(segmentation, layer_image, label_value: int, name: str, color) -> str:
    """Add a segment whose binary labelmap is ``label_value`` in the (shared) ``layer_image``."""
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*[float(c) for c in color])
    segment.SetLabelValue(int(label_value))
    segment.AddRepresentation(BINARY_LABELMAP, layer_image)
    segment_id = segmentation.GenerateUniqueSegmentID(name)
    if not segmentation.AddSegment(segment, segment_id):
        raise BridgeError(f"Could not add segment {name!r} to the segmentation.")
    return segment_id
