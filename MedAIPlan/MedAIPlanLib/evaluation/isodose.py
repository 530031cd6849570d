"""Isodose surfaces (vtkFlyingEdges3D), isodose lines on slices, and the legend that goes with them.

Dose arrays are KJI with a :class:`Geometry`; surfaces are returned as ``vtkPolyData`` in **RAS** mm
(ready for model nodes); lines as (N, 3) RAS points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk
from skimage.measure import find_contours
from vtk.util import numpy_support

from MedAICommonLib.geometry import Geometry

DEFAULT_LEVELS_PERCENT = (30.0, 50.0, 70.0, 90.0, 95.0, 100.0, 105.0)


@dataclass(frozen=True)
class IsodoseLevel:
    """One isodose level: dose (Gy), its label and colour (RGB 0..1)."""

    dose_gy: float
    label: str
    color: tuple[float, float, float]


def isodose_levels(levels, prescription_gy: float | None = None, percent: bool = True) -> list[IsodoseLevel]:
    """Levels in Gy with labels and colours (blue for low to red for high doses).

    ``percent``: ``levels`` are % of ``prescription_gy``; else they are Gy.
    """
    levels = sorted(float(v) for v in levels)
    if not levels:
        raise ValueError("No isodose level given; give at least one, e.g. 50,95,100 (% of the prescription).")
    bad = [v for v in levels if not np.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(
            f"Isodose levels must be positive doses, got {', '.join(f'{v:g}' for v in bad)}; give levels "
            f"above 0 ({'% of the prescription' if percent else 'Gy'})."
        )
    if percent and not (prescription_gy and prescription_gy > 0):
        raise ValueError("Isodose levels in % need a positive prescription dose (Gy).")
    out = []
    for n, v in enumerate(levels):
        t = n / max(len(levels) - 1, 1)
        color = (min(1.0, 2 * t), 1.0 - abs(2 * t - 1.0), max(0.0, 1 - 2 * t))
        dose = v * prescription_gy / 100.0 if percent else v
        label = f"{v:g} % ({dose:.2f} Gy)" if percent else f"{v:g} Gy"
        out.append(IsodoseLevel(dose, label, color))
    return out


def _image(dose: np.ndarray) -> vtk.vtkImageData:
    image = vtk.vtkImageData()
    image.SetDimensions(dose.shape[2], dose.shape[1], dose.shape[0])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(dose, dtype=np.float32).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def isodose_surface(dose: np.ndarray, geometry: Geometry, level_gy: float, smooth: bool = False) -> vtk.vtkPolyData:
    """Closed-as-possible isodose surface at ``level_gy`` (RAS mm, with normals); empty if never reached."""
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(_image(dose))
    fe.SetValue(0, float(level_gy))
    fe.ComputeNormalsOff()
    fe.Update()
    poly = fe.GetOutput()
    if smooth and poly.GetNumberOfPoints():
        sm = vtk.vtkWindowedSincPolyDataFilter()
        sm.SetInputData(poly)
        sm.SetNumberOfIterations(10)
        sm.SetPassBand(0.1)
        sm.NormalizeCoordinatesOn()
        sm.Update()
        poly = sm.GetOutput()
    matrix = vtk.vtkMatrix4x4()
    m = geometry.to_space("RAS").ijk_to_physical()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, m[r, c])
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    tf = vtk.vtkTransformPolyDataFilter()
    tf.SetInputData(poly)
    tf.SetTransform(transform)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(tf.GetOutputPort())
    normals.ConsistencyOn()
    normals.SplittingOff()
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


def enclosed_volume_cc(poly: vtk.vtkPolyData) -> float:
    """Volume (cc) enclosed by a closed triangle surface (divergence theorem)."""
    if poly.GetNumberOfPoints() == 0:
        return 0.0
    mass = vtk.vtkMassProperties()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    mass.SetInputConnection(tri.GetOutputPort())
    mass.Update()
    return float(mass.GetVolume() / 1000.0)


def isodose_lines(dose: np.ndarray, geometry: Geometry, level_gy: float, k: int) -> list[np.ndarray]:
    """Isodose lines at ``level_gy`` on axial slice ``k`` as (N, 3) RAS points (mm)."""
    ras = geometry.to_space("RAS")
    lines = []
    for c in find_contours(np.asarray(dose[k], dtype=float), float(level_gy)):
        ijk = np.column_stack([c[:, 1], c[:, 0], np.full(len(c), float(k))])
        lines.append(ras.index_to_point(ijk))
    return lines


def legend_rows(levels: list[IsodoseLevel]) -> dict[str, list]:
    """Legend as table columns: label, dose (Gy), colour as hex."""
    return {
        "Level": [lv.label for lv in levels],
        "Dose (Gy)": [lv.dose_gy for lv in levels],
        "Color": ["#" + "".join(f"{int(round(255 * c)):02x}" for c in lv.color) for lv in levels],
    }
