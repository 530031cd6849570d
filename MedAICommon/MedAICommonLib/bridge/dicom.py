"""DICOM series -> volume node (via :mod:`MedAICommonLib.dicom_series`)."""

from __future__ import annotations

from ..dicom_series import DicomSeriesError, read_dicom_series
from .errors import BridgeError
from .volumes import sitk_to_volume


def load_dicom_series(scene, folder, name: str | None = None, series_uid: str | None = None):
    """Load one DICOM image series into a new scalar volume node (HU for CT).

    Returns ``(node, info)``; ``info.warnings`` lists uneven spacing or gantry tilt.
    """
    try:
        image, info = read_dicom_series(folder, series_uid)
    except DicomSeriesError as error:
        raise BridgeError(str(error)) from error
    node = sitk_to_volume(image, scene, name or info.description or "DICOM volume")
    node.SetAttribute("DICOM.SeriesInstanceUID", info.series_uid)
    node.SetAttribute("DICOM.Modality", info.modality)
    return node, info
