"""Segmentation nodes <-> label maps (KJI arrays with geometry) and segment metadata.

A label map here is an integer KJI array where value ``v`` marks segment ``segments[i]`` with
``segments[i].label == v``. Segments keep name, colour (RGB 0..1) and an optional terminology
entry string (Slicer's ``Segmentation.TerminologyEntry`` tag format).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from ..geometry import Geometry
from ..runtime import register_converter_rules
from .errors import BridgeError
from .labelmap_layers import (
    BINARY_LABELMAP,
    MAX_LABELS_PER_LAYER,
    add_layer_segment,
    array_from_oriented_image,
    array_on_grid,
    geometry_from_string,
    oriented_image_from_array,
    pack_layers,
)
from .nodes import parent_to_world_matrix, remove_nodes, vtk_matrix_from_array
from .volumes import volume_geometry

TERMINOLOGY_TAG = "TerminologyEntry"

DEFAULT_COLORS = [
    (0.50, 0.68, 0.50),
    (0.94, 0.84, 0.57),
    (0.69, 0.48, 0.39),
    (0.43, 0.72, 0.82),
    (0.85, 0.40, 0.33),
    (0.56, 0.38, 0.76),
    (0.87, 0.71, 0.29),
    (0.30, 0.64, 0.76),
    (0.90, 0.51, 0.70),
    (0.55, 0.80, 0.36),
    (0.72, 0.72, 0.72),
    (0.98, 0.60, 0.25),
]


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: label value in a label map, name, colour (RGB in 0..1), terminology."""

    label: int
    name: str
    color: tuple[float, float, float] | None = None
    terminology: str | None = None

    def color_or_default(self) -> tuple[float, float, float]:
        """The segment's colour, or a distinct default chosen from its label value.

        Slicer reserves exactly (0.5, 0.5, 0.5) to mean "no colour" and replaces it with a
        generated one, so that grey is nudged imperceptibly to be kept.
        """
        color = tuple(self.color) if self.color else DEFAULT_COLORS[(self.label - 1) % len(DEFAULT_COLORS)]
        if all(abs(c - 0.5) < 1e-9 for c in color):
            color = (0.501, 0.501, 0.501)
        return color


def require_segmentation(node, role: str = "segmentation") -> None:
    """Raise unless ``node`` is a segmentation node with at least one segment."""
    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise BridgeError(f"The {role} must be a segmentation node, got {kind}.")
    if node.GetSegmentation().GetNumberOfSegments() == 0:
        raise BridgeError(f"The {role} '{node.GetName()}' has no segments; add or load segments first.")


def segment_infos(node) -> list[SegmentInfo]:
    """Segments of a segmentation node in order, labelled 1..N."""
    segmentation = node.GetSegmentation()
    infos = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        tag = vtk.mutable("")
        terminology = str(tag) if segment.GetTag(TERMINOLOGY_TAG, tag) else None
        infos.append(SegmentInfo(index + 1, segment.GetName(), tuple(segment.GetColor()), terminology))
    return infos


def segment_ids(node) -> list[str]:
    """Segment IDs of a segmentation node, in order."""
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _select_infos(node, segment_names: list[str] | None) -> list[SegmentInfo]:
    infos = segment_infos(node)
    if segment_names is None:
        return infos
    missing = [n for n in segment_names if n not in {s.name for s in infos}]
    if missing:
        raise BridgeError(f"Segment(s) {missing} not found in '{node.GetName()}'; available: {[s.name for s in infos]}")
    return [s for s in infos if s.name in segment_names]


def _labelmap_segmentation(node):
    """The node's vtkSegmentation with binary labelmaps: itself, or a converted copy (the node is not modified)."""
    segmentation = node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() == BINARY_LABELMAP or segmentation.ContainsRepresentation(
        BINARY_LABELMAP
    ):
        return segmentation
    register_converter_rules()  # (a copy made now gets the rules; Slicer has registered them already)
    copy = slicer.vtkSegmentation()
    copy.DeepCopy(segmentation)
    if not copy.CreateRepresentation(BINARY_LABELMAP):
        source = segmentation.GetSourceRepresentationName()
        hint = (
            " Its segments are planar contours (e.g. a SlicerRT structure set), which slicer-core "
            "cannot rasterise; import the RTSTRUCT with MedAIPlan (medai rt-import) instead."
            if source == "Planar contour"
            else ""
        )
        raise BridgeError(f"Could not export segments of '{node.GetName()}' to a label map.{hint}")
    return copy


def _own_grid(node, segmentation, ids: list[str]) -> Geometry | None:
    """The segmentation's own grid (world RAS): its reference geometry, else the segments' union; None if empty."""
    id_list = vtk.vtkStringArray()
    for segment_id in ids:
        id_list.InsertNextValue(segment_id)
    text = segmentation.DetermineCommonLabelmapGeometry(slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, id_list)
    geometry = geometry_from_string(text)
    if geometry is None or min(geometry.shape_kji) <= 0:
        return None
    to_world = parent_to_world_matrix(node)
    if np.allclose(to_world, np.eye(4)):
        return geometry
    return Geometry.from_ijk_to_physical(to_world @ geometry.ijk_to_physical(), "RAS", geometry.shape_kji)


def _iter_masks(node, reference: Geometry | None, segment_names: list[str] | None):
    """The grid, then (info, boolean KJI mask) per selected segment, reading each layer once."""
    require_segmentation(node)
    if reference is not None and reference.shape_kji is None:
        raise BridgeError("The reference geometry needs a shape (shape_kji) to place the segments on.")
    infos = _select_infos(node, segment_names)
    ids = segment_ids(node)
    segmentation = _labelmap_segmentation(node)
    own = _own_grid(node, segmentation, ids)  # one grid for the node, whichever segments are read
    if own is None and reference is None:
        raise BridgeError(
            f"The segments of '{node.GetName()}' are empty and it has no reference geometry; "
            "give a reference volume to place them on."
        )
    target = reference if reference is not None and (own is None or not own.same_grid(reference)) else own
    to_world = parent_to_world_matrix(node)
    yield target if reference is None else reference
    layers = {}
    for info in infos:
        segment = segmentation.GetSegment(ids[info.label - 1])
        image = segment.GetRepresentation(BINARY_LABELMAP)
        if image is None:
            yield info, np.zeros(target.shape_kji, bool)
            continue
        key = image.GetAddressAsString("vtkOrientedImageData")
        if key not in layers:
            array, geometry = array_from_oriented_image(image)
            geometry = Geometry.from_ijk_to_physical(to_world @ geometry.ijk_to_physical(), "RAS", geometry.shape_kji)
            layers = {key: array_on_grid(array, geometry, target)}  # keep one layer in memory at a time
        yield info, layers[key] == segment.GetLabelValue()


def segment_masks(
    node, reference: Geometry | None = None, segment_names: list[str] | None = None
) -> tuple[dict[str, np.ndarray], Geometry]:
    """One boolean KJI mask per segment (by name, in segment order) and their RAS geometry.

    Every layer is read, so overlapping segments keep their full masks. The masks lie on
    ``reference`` (nearest-neighbour resampling; RAS or LPS) or, without it, on the segmentation's own
    grid (its reference image geometry, else the union of its segments), in world coordinates.
    """
    masks = _iter_masks(node, reference, segment_names)
    geometry = next(masks)
    return {info.name: mask for info, mask in masks}, geometry


def labelmap_from_segmentation(
    node, reference: Geometry | None = None, segment_names: list[str] | None = None
) -> tuple[np.ndarray, Geometry, list[SegmentInfo]]:
    """Merge segments into one label map (uint16 KJI) on ``reference`` or the segmentation's own grid.

    Overlapping segments: later segments win. Returns the array, its RAS geometry and the segments
    with their label values.
    """
    masks = _iter_masks(node, reference, segment_names)
    geometry = next(masks)
    labels = np.zeros(geometry.shape_kji, dtype=np.uint16)
    infos = []
    for info, mask in masks:
        labels[mask] = info.label
        infos.append(info)
    return labels, geometry, infos


def segment_mask(node, segment_name: str, reference: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """Boolean KJI mask of one segment (by name) and its RAS geometry."""
    masks, geometry = segment_masks(node, reference, [segment_name])
    return masks[segment_name], geometry


def _prepare_node(scene, name: str, node):
    """A new segmentation node (with display) or ``node`` emptied; and whether it was created."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        return node, True
    node.GetSegmentation().RemoveAllSegments()
    return node, False


def _set_reference_geometry(node, geometry: Geometry, reference_volume) -> None:
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        return
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, geometry.shape_kji[2] - 1, 0, geometry.shape_kji[1] - 1, 0, geometry.shape_kji[0] - 1)
    image.SetImageToWorldMatrix(vtk_matrix_from_array(geometry.to_space("RAS").ijk_to_physical()))
    segmentation = node.GetSegmentation()
    segmentation.SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(image),
    )


def create_segmentation(
    scene,
    labels: np.ndarray,
    geometry: Geometry,
    segments: list[SegmentInfo],
    name: str,
    node=None,
    reference_volume=None,
):
    """Create (or update, replacing its segments) a segmentation node from a label map.

    The label map becomes one shared labelmap layer in which each segment keeps its label value.
    Segments with no voxels are still created (empty), so names and colours are kept. The
    reference geometry is set from ``reference_volume`` when given (as DICOM SEG export needs).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise BridgeError(f"A label map must hold integers, got {labels.dtype}")
    if labels.ndim != 3:
        raise BridgeError(f"A label map needs a 3D array (k, j, i), got shape {labels.shape}")
    values = [int(info.label) for info in segments]
    if any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise BridgeError(f"Segment label values must be distinct and positive, got {values}")
    layer = np.where(np.isin(labels, values), labels, 0)
    layer = layer.astype(np.uint8 if max(values, default=0) <= MAX_LABELS_PER_LAYER else np.uint16)
    geometry = geometry.with_shape(labels.shape)
    node, created = _prepare_node(scene, name, node)
    try:
        _set_reference_geometry(node, geometry, reference_volume)
        image = oriented_image_from_array(layer, geometry)
        segmentation = node.GetSegmentation()
        for info in segments:
            segment_id = add_layer_segment(segmentation, image, info.label, info.name, info.color_or_default())
            if info.terminology:
                segmentation.GetSegment(segment_id).SetTag(TERMINOLOGY_TAG, info.terminology)
    except Exception:
        if created:
            remove_nodes(scene, [node])
        raise
    return node


def create_segmentation_from_masks(
    scene,
    masks: dict[str, np.ndarray],
    geometry: Geometry,
    name: str,
    colors: dict[str, tuple] | None = None,
    node=None,
    reference_volume=None,
):
    """Create (or update, replacing its segments) a segmentation node from boolean KJI masks.

    Args:
        scene: the MRML scene.
        masks: ``{segment name: mask}``, each a (k, j, i) boolean (or 0/1) array on ``geometry``; the
            segments are added in this order. Masks may overlap: each segment keeps its mask exactly,
            in as few shared labelmap layers as the overlaps need. Empty masks become empty segments.
        geometry: the masks' grid (RAS or LPS).
        name: the new node's name (ignored when ``node`` is given).
        colors: ``{segment name: (r, g, b)}`` in 0..1; others get distinct defaults.
        node: an existing segmentation node to fill instead of creating one.
        reference_volume: volume whose geometry becomes the reference image geometry (default: ``geometry``).
    """
    arrays = [np.asarray(m) for m in masks.values()]
    shape = arrays[0].shape if arrays else tuple(geometry.shape_kji or ())
    for segment_name, array in zip(masks, arrays):
        if array.shape != shape or array.ndim != 3:
            raise BridgeError(
                f"The mask of segment {segment_name!r} has shape {array.shape}; all masks need one "
                f"3D (k, j, i) shape, here {shape}."
            )
        if array.dtype != np.bool_ and not np.all((array == 0) | (array == 1)):
            raise BridgeError(f"The mask of segment {segment_name!r} holds values other than 0 and 1.")
    if len(shape) != 3:
        raise BridgeError("No masks and no grid shape: give at least one mask or a geometry with shape_kji.")
    geometry = geometry.with_shape(shape)
    layers, places = pack_layers([a.astype(bool) for a in arrays])
    colors = colors or {}
    node, created = _prepare_node(scene, name, node)
    try:
        _set_reference_geometry(node, geometry, reference_volume)
        images = [oriented_image_from_array(layer, geometry) for layer in layers]
        segmentation = node.GetSegmentation()
        for index, (segment_name, (layer, value)) in enumerate(zip(masks, places)):
            color = colors.get(segment_name) or SegmentInfo(index + 1, segment_name).color_or_default()
            add_layer_segment(segmentation, images[layer], value, segment_name, color)
    except Exception:
        if created:
            remove_nodes(scene, [node])
        raise
    return node


def reference_geometry(node) -> Geometry | None:
    """Reference image geometry of a segmentation node (RAS), if set."""
    return geometry_from_string(node.GetSegmentation().GetConversionParameter("Reference image geometry"))


__all__ = [
    "SegmentInfo",
    "create_segmentation",
    "create_segmentation_from_masks",
    "labelmap_from_segmentation",
    "reference_geometry",
    "require_segmentation",
    "segment_ids",
    "segment_infos",
    "segment_mask",
    "segment_masks",
    "volume_geometry",
]
