"""Planar contours of segments (SlicerRT's "Planar contour" representation): RTSTRUCT contours kept
beside the binary label map so DVHs can be computed from the contours themselves.

Contours are given in LPS (as DICOM) and stored as polydata in RAS (as MRML), one closed line cell
per contour; they are read back in RAS.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

PLANAR_CONTOUR = "Planar contour"


def polydata_from_contours(contours_lps: list[np.ndarray]):
    """A planar-contour polydata (RAS points, one closed line cell per contour) from LPS contours."""
    points = np.concatenate(contours_lps) * np.array([-1.0, -1.0, 1.0])
    vtk_points = vtk.vtkPoints()
    vtk_points.SetData(numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    lines = vtk.vtkCellArray()
    start = 0
    for c in contours_lps:
        ids = list(range(start, start + len(c))) + [start]
        lines.InsertNextCell(len(ids), ids)
        start += len(c)
    poly = vtk.vtkPolyData()
    poly.SetPoints(vtk_points)
    poly.SetLines(lines)
    return poly


def contours_from_polydata(poly) -> list[np.ndarray]:
    """Closed contours ((N, 3) RAS points, N >= 3) from a planar-contour polydata (one line cell each)."""
    if poly is None or poly.GetNumberOfPoints() == 0:
        return []
    points = vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    lines = poly.GetLines()
    offsets = vtk_to_numpy(lines.GetOffsetsArray()).astype(int)
    conn = vtk_to_numpy(lines.GetConnectivityArray()).astype(int)
    contours = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        ids = conn[a:b]
        if len(ids) > 1 and ids[0] == ids[-1]:
            ids = ids[:-1]
        if len(ids) >= 3:
            contours.append(points[ids])
    return contours


def _segment(node, segment_name: str):
    segmentation = node.GetSegmentation()
    return segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(segment_name))


def set_planar_contours(node, segment_name: str, contours_lps: list[np.ndarray]) -> bool:
    """Add the LPS contours to the named segment as its planar-contour representation (False: no such segment)."""
    segment = _segment(node, segment_name)
    if segment is None:
        return False
    segment.AddRepresentation(PLANAR_CONTOUR, polydata_from_contours(contours_lps))
    return True


def planar_contours(node, segment_name: str) -> list[np.ndarray]:
    """The named segment's planar contours in RAS ([] when it has none or does not exist)."""
    segment = _segment(node, segment_name)
    return contours_from_polydata(segment.GetRepresentation(PLANAR_CONTOUR)) if segment is not None else []
