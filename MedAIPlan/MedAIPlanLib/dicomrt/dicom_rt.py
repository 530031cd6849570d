"""DICOM-RT import: RTDOSE grids, RTSTRUCT contours (and their rasterisation), RTPLAN beams.

Everything is returned in DICOM's patient coordinates, **LPS** mm, arrays KJI.

RTDOSE geometry: column direction i = ImageOrientationPatient[0:3] with spacing PixelSpacing[1],
row direction j = ImageOrientationPatient[3:6] with spacing PixelSpacing[0] (pixels may be
non-square), frames along the normal i x j at GridFrameOffsetVector (relative when its first value
is 0, else absolute positions along the normal). Frames are reordered so that k runs along
+normal with a positive spacing; feet-first orientations ([-1,0,0,0,1,0]) fall out of the
direction cosines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from scipy.interpolate import interp1d

from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.dose.beams import check_angles
from MedAIPlanLib.evaluation.dvh import group_contours_by_plane, inside_polygons, slab_bounds


def read_dataset(path) -> pydicom.Dataset:
    """Read a DICOM file, also one without a file meta header (implicit VR little endian)."""
    ds = pydicom.dcmread(str(path), force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = ds.file_meta if meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


@dataclass
class RtDose:
    """An RTDOSE grid: dose (float32, KJI, in ``units``), LPS geometry and header facts."""

    dose: np.ndarray
    geometry: Geometry
    units: str
    scaling: float
    summation: str
    frame_of_reference_uid: str = ""
    dataset: pydicom.Dataset | None = field(default=None, repr=False)


def read_rtdose(path_or_dataset) -> RtDose:
    """Read an RTDOSE (multi-frame, any GridFrameOffsetVector, DoseGridScaling applied)."""
    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else read_dataset(path_or_dataset)
    if getattr(ds, "Modality", "RTDOSE") != "RTDOSE":
        raise ValueError(f"Expected an RTDOSE, got modality {ds.Modality}.")
    pixels = ds.pixel_array.astype(np.float64)
    if pixels.ndim == 2:
        pixels = pixels[None]
    scaling = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    dose = pixels * scaling
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    n_frames = dose.shape[0]
    offsets = np.array(getattr(ds, "GridFrameOffsetVector", None) or [0.0], dtype=float)[:n_frames]
    if len(offsets) < n_frames:
        raise ValueError(f"RTDOSE has {n_frames} frames but only {len(offsets)} GridFrameOffsetVector values.")
    if n_frames > 1 and offsets[0] != 0.0:  # absolute positions along the normal
        offsets = offsets - offsets[0]
    order = np.argsort(offsets, kind="stable")
    offsets, dose = offsets[order], dose[order]
    origin = ipp + offsets[0] * normal
    rel = offsets - offsets[0]
    if n_frames > 1:
        steps = np.diff(rel)
        step = float(np.median(steps))
        if np.max(np.abs(steps - step)) > 1e-3 * max(step, 1e-6):  # non-uniform: resample linearly
            step = float(steps.min())
            new = np.arange(0, rel[-1] + step / 2, step)
            dose = interp1d(rel, dose, axis=0)(np.clip(new, 0, rel[-1]))
    else:
        step = float(getattr(ds, "SliceThickness", 0) or 1.0)
    spacing = (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), step)
    direction = np.column_stack([row_dir, col_dir, normal])
    geometry = Geometry(spacing, tuple(origin), direction, "LPS", dose.shape)
    return RtDose(
        dose.astype(np.float32),
        geometry,
        str(getattr(ds, "DoseUnits", "GY")).upper(),
        scaling,
        str(getattr(ds, "DoseSummationType", "")),
        str(getattr(ds, "FrameOfReferenceUID", "")),
        ds,
    )


@dataclass
class RtRoi:
    """One RTSTRUCT ROI: number, name, colour (0..1), type and closed planar contours (LPS mm)."""

    number: int
    name: str
    color: tuple[float, float, float] | None
    roi_type: str
    contours: list[np.ndarray]
    points: list[np.ndarray] = field(default_factory=list)


def read_rtstruct(path_or_dataset) -> list[RtRoi]:
    """ROIs of an RTSTRUCT with their CLOSED_PLANAR contours (POINT contours kept separately)."""
    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else read_dataset(path_or_dataset)
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    types = {
        int(o.ReferencedROINumber): str(getattr(o, "RTROIInterpretedType", ""))
        for o in getattr(ds, "RTROIObservationsSequence", [])
    }
    rois = []
    for rc in getattr(ds, "ROIContourSequence", []):
        number = int(rc.ReferencedROINumber)
        color = tuple(float(c) / 255.0 for c in rc.ROIDisplayColor) if "ROIDisplayColor" in rc else None
        contours, points = [], []
        for c in getattr(rc, "ContourSequence", []):
            data = np.array(c.ContourData, dtype=float).reshape(-1, 3)
            kind = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR"))
            (contours if kind == "CLOSED_PLANAR" and len(data) >= 3 else points).append(data)
        rois.append(RtRoi(number, names.get(number, f"ROI {number}"), color, types.get(number, ""), contours, points))
    return rois


def contour_grid(contours_by_roi: list[list[np.ndarray]], pixel_mm: float = 1.0, margin_mm: float = 2.0) -> Geometry:
    """An axial LPS grid covering all contours: ``pixel_mm`` in-plane, one slice per contour plane."""
    allc = [c for cs in contours_by_roi for c in cs]
    if not allc:
        raise ValueError("The structure set has no closed planar contours to rasterise.")
    pts = np.concatenate(allc)
    zs = np.array(sorted({float(np.round(np.median(c[:, 2]), 2)) for c in allc}))
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else pixel_mm
    lo = pts.min(axis=0) - margin_mm
    hi = pts.max(axis=0) + margin_mm
    n_xy = np.ceil((hi[:2] - lo[:2]) / pixel_mm).astype(int) + 1
    nz = int(round((zs[-1] - zs[0]) / dz)) + 1
    return Geometry((pixel_mm, pixel_mm, dz), (lo[0], lo[1], zs[0]), np.eye(3), "LPS", (nz, int(n_xy[1]), int(n_xy[0])))


def rasterize_contours(contours: list[np.ndarray], geometry: Geometry) -> np.ndarray:
    """Boolean KJI mask on any voxel grid (axial or oblique, ``geometry`` in LPS or RAS; contours LPS).

    A voxel is in when its centre lies in the slab of a contour plane (half-way to the neighbouring
    planes, half-slice end caps at the first/last plane and at gaps, as :func:`dvh.contour_volume_cc`)
    and, projected along z onto that plane, inside its polygons (even-odd). On an axial grid with one
    slice per contour plane this is the usual "fill each slice with its contour"; on a finer axial grid
    every slice of a slab is filled; on an oblique grid each voxel centre is taken to contour space and
    tested against the plane whose slab holds it.
    """
    geometry = geometry.to_space("LPS")
    nk, nj, ni = geometry.shape_kji
    mask = np.zeros((nk, nj, ni), dtype=bool)
    planes = group_contours_by_plane(contours)
    if not planes:
        return mask
    zs = np.array(list(planes))
    lower, upper = slab_bounds(zs, None)
    polys_by_plane = list(planes.values())
    if np.allclose(np.abs(np.diag(geometry.direction)), 1.0, atol=1e-6):
        return _rasterize_axis_aligned(polys_by_plane, lower, upper, geometry)
    pts = np.concatenate([p for polys in polys_by_plane for p in polys])
    lo = np.array([*pts.min(axis=0), lower[0]])
    hi = np.array([*pts.max(axis=0), upper[-1]])
    # index-space bounding box of the contours' physical box (any orientation)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = geometry.point_to_index(corners)
    i0, j0, k0 = (max(0, int(np.floor(v)) - 1) for v in ijk.min(axis=0))
    i1, j1, k1 = (min(n, int(np.ceil(v)) + 2) for v, n in zip(ijk.max(axis=0), (ni, nj, nk)))
    if i1 <= i0 or j1 <= j0 or k1 <= k0:
        return mask
    jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
    for k in range(k0, k1):  # one grid slice at a time (memory), its voxel centres in LPS
        centres = geometry.index_to_point(np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1))
        box = np.all((centres >= lo) & (centres <= hi), axis=1)
        if not box.any():
            continue
        idx = np.flatnonzero(box)
        plane = np.searchsorted(upper, centres[idx, 2], side="right")  # first plane with z < upper
        ok = plane < len(zs)
        idx, plane = idx[ok], plane[ok]
        ok = centres[idx, 2] >= lower[plane]
        idx, plane = idx[ok], plane[ok]
        inside = np.zeros(ii.size, dtype=bool)
        for n in np.unique(plane):
            sel = idx[plane == n]
            inside[sel] = inside_polygons(centres[sel, :2], polys_by_plane[n])
        mask[k, j0:j1, i0:i1] = inside.reshape(ii.shape)
    return mask


def _rasterize_axis_aligned(polys_by_plane, lower, upper, geometry: Geometry) -> np.ndarray:
    """:func:`rasterize_contours` on a grid whose i, j, k axes run along LPS +-x, +-y, +-z: scan-line fill."""
    d = np.diag(geometry.direction)
    coords = [
        geometry.origin[a] + d[a] * geometry.spacing[a] * np.arange(n) for a, n in enumerate(geometry.shape_kji[::-1])
    ]  # x of each i, y of each j, z of each k
    mask = np.zeros(geometry.shape_kji, dtype=bool)
    for k, z in enumerate(coords[2]):
        plane = int(np.searchsorted(upper, z, side="right"))  # first plane with z < upper
        if plane < len(upper) and z >= lower[plane]:
            mask[k] = _fill_polygons(polys_by_plane[plane], coords[0], coords[1])
    return mask


def _fill_polygons(polys: list[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Even-odd fill (rows j: ``ys``, columns i: ``xs``) of closed polygons: a pixel is in when its centre is.

    Each row counts the polygon edges it crosses (half-open in y, so a vertex on a row counts once)
    left of each pixel centre; ``xs`` and ``ys`` may run either way.
    """
    x_order, y_order = np.argsort(xs), np.argsort(ys)
    xs_sorted, ys_sorted = xs[x_order], ys[y_order]
    toggles = np.zeros((len(ys), len(xs) + 1), dtype=np.int32)
    for poly in polys:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        r0 = np.searchsorted(ys_sorted, np.minimum(y0, y1), side="left")
        r1 = np.searchsorted(ys_sorted, np.maximum(y0, y1), side="left")
        count = r1 - r0  # rows with min(y0, y1) <= y < max(y0, y1); horizontal edges cross none
        edge = np.repeat(np.arange(len(x0)), count)
        rows = np.repeat(r0, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        y = ys_sorted[rows]
        x = x0[edge] + (y - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        np.add.at(toggles, (rows, np.searchsorted(xs_sorted, x, side="right")), 1)
    inside = (np.cumsum(toggles[:, :-1], axis=1) % 2).astype(bool)
    out = np.empty_like(inside)
    out[np.ix_(y_order, x_order)] = inside
    return out


@dataclass
class RtBeam:
    """One treatment beam (geometry at the first control point; angles in degrees, LPS mm)."""

    number: int
    name: str
    radiation_type: str
    energy_mv: float | None
    gantry_deg: float
    couch_deg: float
    collimator_deg: float
    isocenter_lps: tuple[float, float, float]
    sad_mm: float
    meterset_mu: float | None
    control_points: int
    jaws_mm: dict = field(default_factory=dict)


def read_rtplan(path_or_dataset) -> dict:
    """Plan label, fractions and beams (:class:`RtBeam`) of an RTPLAN."""
    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else read_dataset(path_or_dataset)
    meterset, fractions = {}, None
    for fg in getattr(ds, "FractionGroupSequence", []):
        fractions = int(getattr(fg, "NumberOfFractionsPlanned", 0) or 0) or fractions
        for rb in getattr(fg, "ReferencedBeamSequence", []):
            if "BeamMeterset" in rb:
                meterset[int(rb.ReferencedBeamNumber)] = float(rb.BeamMeterset)
    beams = []
    for b in getattr(ds, "BeamSequence", []):
        cps = list(getattr(b, "ControlPointSequence", []))
        cp0 = cps[0] if cps else pydicom.Dataset()
        jaws = {}
        for dev in getattr(cp0, "BeamLimitingDevicePositionSequence", []):
            if str(dev.RTBeamLimitingDeviceType) in ("X", "Y", "ASYMX", "ASYMY"):
                jaws[str(dev.RTBeamLimitingDeviceType)] = [float(v) for v in dev.LeafJawPositions]
        name = str(getattr(b, "BeamName", b.BeamNumber))
        gantry, couch, collimator = (
            check_angles(getattr(cp0, key, 0.0), f"RTPLAN beam '{name}' {kind} angle")[0]
            for key, kind in (
                ("GantryAngle", "gantry"),
                ("PatientSupportAngle", "couch"),
                ("BeamLimitingDeviceAngle", "collimator"),
            )
        )
        beams.append(
            RtBeam(
                int(b.BeamNumber),
                name,
                str(getattr(b, "RadiationType", "")),
                float(cp0.NominalBeamEnergy) if "NominalBeamEnergy" in cp0 else None,
                gantry,
                couch,
                collimator,
                tuple(float(v) for v in getattr(cp0, "IsocenterPosition", (0.0, 0.0, 0.0))),
                float(getattr(b, "SourceAxisDistance", 1000.0)),
                meterset.get(int(b.BeamNumber)),
                len(cps),
                jaws,
            )
        )
    return {
        "label": str(getattr(ds, "RTPlanLabel", "")),
        "fractions": fractions,
        "beams": beams,
        "frame_of_reference_uid": str(getattr(ds, "FrameOfReferenceUID", "")),
    }


def modality_of(path) -> str:
    """The Modality of a DICOM file ('RTDOSE', 'RTSTRUCT', 'RTPLAN', 'CT' ...)."""
    ds = pydicom.dcmread(str(Path(path)), force=True, stop_before_pixels=True)
    return str(getattr(ds, "Modality", ""))
