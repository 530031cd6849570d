"""DICOM image series -> SimpleITK image (LPS, rescaled), with checks a radiologist expects.

Reads headers with pydicom to group files by series and check the slice stack (one series
only, consistent orientation, no missing slices, even spacing, no gantry tilt), then reads
pixels with SimpleITK's series reader, which applies RescaleSlope/RescaleIntercept (HU for CT).
Qt- and Slicer-free; :func:`MedAICommonLib.bridge.dicom.load_dicom_series` wraps it for MRML.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

log = logging.getLogger(__name__)


class DicomSeriesError(ValueError):
    """A DICOM input that cannot be read as one volume; the message says why and what to do."""


@dataclass
class DicomSeriesInfo:
    """What was found while reading a series."""

    series_uid: str
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    modality: str = ""
    description: str = ""


def _read_headers(paths: list[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    headers = []
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - non-DICOM files in the folder are skipped
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            headers.append((path, ds))
    return headers


def list_series(folder) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Image files under ``folder`` (recursively) grouped by SeriesInstanceUID."""
    folder = Path(folder)
    if not folder.exists():
        raise DicomSeriesError(f"DICOM folder not found: {folder}")
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    series: dict[str, list] = {}
    for path, ds in _read_headers(paths):
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append((path, ds))
    if not series:
        raise DicomSeriesError(f"No DICOM images with position and orientation found in {folder}.")
    return series


def _check_stack(items, info: DicomSeriesInfo, max_gap_factor: float) -> list[Path]:
    """Sort slices along the normal and check orientation, gaps, spacing and tilt."""
    orientations = {tuple(np.round(np.array(ds.ImageOrientationPatient, float), 4)) for _, ds in items}
    if len(orientations) > 1:
        raise DicomSeriesError(
            f"Series {info.series_uid} mixes {len(orientations)} slice orientations "
            "(e.g. a localizer); choose one orientation's files."
        )
    iop = np.array(items[0][1].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.array(ds.ImagePositionPatient, float) for _, ds in items])
    distances = positions @ normal
    order = np.argsort(distances)
    items = [items[i] for i in order]
    distances, positions = distances[order], positions[order]
    if len(items) < 2:
        return [p for p, _ in items]
    steps = np.diff(distances)
    if np.any(steps < 1e-3):
        raise DicomSeriesError(
            f"Series {info.series_uid} has several slices at the same position "
            "(duplicate files or several acquisitions); separate them first."
        )
    median = float(np.median(steps))
    if np.any(steps > max_gap_factor * median):
        gaps = int(np.sum(np.round(steps / median) - 1))
        raise DicomSeriesError(
            f"Series {info.series_uid} is missing about {gaps} slice(s) "
            f"(gap of {steps.max():.2f} mm where slices are {median:.2f} mm apart); "
            "re-export the complete series."
        )
    if np.ptp(steps) > 0.01 * median + 1e-3:
        info.warnings.append(
            f"uneven slice spacing ({steps.min():.3f}-{steps.max():.3f} mm); the volume uses the mean spacing"
        )
    stack_direction = positions[-1] - positions[0]
    stack_direction /= np.linalg.norm(stack_direction)
    tilt = np.degrees(np.arccos(min(1.0, abs(float(stack_direction @ normal)))))
    if tilt > 0.5:
        info.warnings.append(
            f"gantry tilt of {tilt:.1f} degrees: slices are sheared; "
            "resample (e.g. Slicer's 'Acquisition transform') before measuring"
        )
    return [p for p, _ in items]


def read_dicom_series(
    folder, series_uid: str | None = None, max_gap_factor: float = 1.5
) -> tuple[sitk.Image, DicomSeriesInfo]:
    """Read one DICOM series from a folder (or one file) into a SimpleITK image (LPS).

    With several series in the folder, ``series_uid`` must name one; otherwise a
    :class:`DicomSeriesError` lists them.
    """
    groups = list_series(folder)
    if series_uid is None and len(groups) > 1:
        described = "; ".join(
            f"{uid} ({len(v)} files, {getattr(v[0][1], 'SeriesDescription', '')})" for uid, v in groups.items()
        )
        raise DicomSeriesError(f"{folder} holds {len(groups)} series; choose one with --series-uid: {described}")
    uid = series_uid or next(iter(groups))
    if uid not in groups:
        raise DicomSeriesError(f"Series {uid} not found in {folder}; found {list(groups)}")
    items = groups[uid]
    first = items[0][1]
    info = DicomSeriesInfo(
        uid, [], modality=str(getattr(first, "Modality", "")), description=str(getattr(first, "SeriesDescription", ""))
    )
    info.files = _check_stack(items, info, max_gap_factor)
    for warning in info.warnings:
        log.warning("DICOM series %s: %s", uid, warning)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in info.files])
    if _needs_float(first):
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise DicomSeriesError(f"Could not decode the pixels of series {uid}: {str(error).splitlines()[0]}") from error
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if len(info.files) == 1:
        image = _single_slice_geometry(image, first)
    return image, info


def _needs_float(ds) -> bool:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return slope != int(slope) or intercept != int(intercept)


def _single_slice_geometry(image: sitk.Image, ds) -> sitk.Image:
    """Give a one-slice image the slice's orientation and thickness as its third axis."""
    iop = np.array(ds.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    direction = np.column_stack([iop[:3], iop[3:], normal])
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in ds.ImagePositionPatient))
    row, col = (float(v) for v in ds.PixelSpacing)
    thickness = float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    image.SetSpacing((col, row, thickness))
    return image
