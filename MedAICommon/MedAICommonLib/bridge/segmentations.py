"""Segmentation nodes <-> label maps (KJI arrays with geometry) and segment metadata.

A label map here is an integer KJI array where value ``v`` marks segment ``segments[i]`` with
``segments[i].label == v``. Segments keep name, colour (RGB 0..1) and an optional terminology
entry string (Slicer's ``Segmentation.TerminologyEntry`` tag format).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..geometry import Geometry
from ..runtime import segmentations_logic
from .errors import BridgeError
from .nodes import remove_nodes
from .volumes import create_volume, resample_array, volume_geometry

TERMINOLOGY_TAG = "TerminologyEntry"

DEFAULT_COLORS = [
    (0.50, 0.68, 0.50), (0.94, 0.84, 0.57), (0.69, 0.48, 0.39), (0.43, 0.72, 0.82),
    (0.85, 0.40, 0.33), (0.56, 0.38, 0.76), (0.87, 0.71, 0.29), (0.30, 0.64, 0.76),
    (0.90, 0.51, 0.70), (0.55, 0.80, 0.36), (0.72, 0.72, 0.72), (0.98, 0.60, 0.25),
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


def labelmap_from_segmentation(node, reference: Geometry | None = None,
                               segment_names: list[str] | None = None) -> tuple[np.ndarray, Geometry, list[SegmentInfo]]:
    """Merge segments into one label map (uint16 KJI) on ``reference`` or the segmentation's own grid.

    Overlapping segments: later segments win. Returns the array, its RAS geometry and the segments
    with their label values.
    """
    require_segmentation(node)
    infos = segment_infos(node)
    if segment_names is not None:
        missing = [n for n in segment_names if n not in {s.name for s in infos}]
        if missing:
            raise BridgeError(f"Segment(s) {missing} not found in '{node.GetName()}'; available: "
                              f"{[s.name for s in infos]}")
        infos = [s for s in infos if s.name in segment_names]
    ids = segment_ids(node)
    scene = node.GetScene()
    colors_before = _color_table_ids(scene)
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medai_temp_labelmap__")
    try:
        id_list = vtk.vtkStringArray()
        for info in infos:
            id_list.InsertNextValue(ids[info.label - 1])
        logic = segmentations_logic(scene)
        extent_mode = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        ok = logic.ExportSegmentsToLabelmapNode(node, id_list, label_node, None, extent_mode)
        if not ok:
            source = node.GetSegmentation().GetSourceRepresentationName()
            hint = (" Its segments are planar contours (e.g. a SlicerRT structure set), which slicer-core "
                    "cannot rasterise; import the RTSTRUCT with MedAIPlan (medai rt-import) instead."
                    if source == "Planar contour" else "")
            raise BridgeError(f"Could not export segments of '{node.GetName()}' to a label map.{hint}")
        from .volumes import array_from_volume
        array, geometry = array_from_volume(label_node, world=True)
    finally:
        remove_nodes(scene, [label_node])
        # The export makes a colour table for the temporary label map: remove whatever it added.
        for color_id in _color_table_ids(scene) - colors_before:
            scene.RemoveNode(scene.GetNodeByID(color_id))
    # Exported values follow the order of id_list (1..n); map them to the segments' labels.
    relabeled = np.zeros(array.shape, dtype=np.uint16)
    for order, info in enumerate(infos, start=1):
        relabeled[array == order] = info.label
    if reference is not None:
        if not geometry.same_grid(reference):       # (already there: the usual case, a CT's own segmentation)
            relabeled = resample_array(relabeled, geometry, reference, interpolator=sitk.sitkNearestNeighbor)
        geometry = reference
    return relabeled, geometry, infos


def _color_table_ids(scene) -> set[str]:
    return {scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode").GetID()
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))}


def segment_mask(node, segment_name: str, reference: Geometry | None = None) -> tuple[np.ndarray, Geometry]:
    """Boolean KJI mask of one segment (by name) and its RAS geometry."""
    labels, geometry, infos = labelmap_from_segmentation(node, reference, [segment_name])
    return labels == infos[0].label, geometry


def create_segmentation(scene, labels: np.ndarray, geometry: Geometry, segments: list[SegmentInfo],
                        name: str, node=None, reference_volume=None):
    """Create (or update, replacing its segments) a segmentation node from a label map.

    Segments with no voxels are still created (empty), so names and colours are kept. The
    reference geometry is set from ``reference_volume`` when given (as DICOM SEG export needs).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise BridgeError(f"A label map must hold integers, got {labels.dtype}")
    created = node is None
    if created:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
    else:
        node.GetSegmentation().RemoveAllSegments()
    temp = create_volume(scene, labels.astype(np.uint16), geometry, "__medai_temp_import__", labelmap=True)
    try:
        if reference_volume is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        else:
            node.SetReferenceImageGeometryParameterFromVolumeNode(temp)
        segmentation = node.GetSegmentation()
        for info in segments:
            binary = (labels == info.label).astype(np.uint8)
            seg_id = segmentation.AddEmptySegment("", info.name, list(info.color_or_default()))
            if binary.any():
                one = create_volume(scene, binary, geometry, "__medai_temp_segment__", labelmap=True)
                try:
                    oriented = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(one)
                    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                        oriented, node, seg_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
                finally:
                    remove_nodes(scene, [one])
            if info.terminology:
                segmentation.GetSegment(seg_id).SetTag(TERMINOLOGY_TAG, info.terminology)
    except Exception:
        if created:
            remove_nodes(scene, [node])
        raise
    finally:
        remove_nodes(scene, [temp])
    return node


def reference_geometry(node) -> Geometry | None:
    """Reference image geometry of a segmentation node (RAS), if set."""
    text = node.GetSegmentation().GetConversionParameter("Reference image geometry")
    if not text:
        return None
    values = [float(v) for v in text.split(";") if v.strip()]
    matrix = np.array(values[:16]).reshape(4, 4)
    extent = [int(v) for v in values[16:22]]
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    # The extent may start away from index 0: move the origin to the first voxel of the extent.
    matrix[:3, 3] = (matrix @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    return Geometry.from_ijk_to_physical(matrix, "RAS", shape)


__all__ = [
    "SegmentInfo", "create_segmentation", "labelmap_from_segmentation", "reference_geometry",
    "require_segmentation", "segment_ids", "segment_infos", "segment_mask", "volume_geometry",
]
