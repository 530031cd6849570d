"""Write small synthetic DICOM CT series for tests (pydicom), with chosen geometry and rescale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(
    folder,
    hu_kji: np.ndarray,
    spacing_xyz=(0.8, 0.6, 2.5),
    origin_lps=(-50.0, -40.0, 10.0),
    row_dir=(1.0, 0.0, 0.0),
    col_dir=(0.0, 1.0, 0.0),
    skip_slices=(),
    positions=None,
    series_uid=None,
    intercept=-1024.0,
    slope=1.0,
    shift_per_slice=(0.0, 0.0),
) -> list[Path]:
    """Write ``hu_kji`` as one file per slice; returns the paths.

    ``spacing_xyz`` = (column spacing, row spacing, slice step) in mm. ``positions`` overrides the
    slice positions along the normal; ``shift_per_slice`` shears the stack (gantry tilt).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k, hu in enumerate(hu_kji):
        if k in skip_slices:
            continue
        step = positions[k] if positions is not None else k * spacing_xyz[2]
        position = (
            np.asarray(origin_lps, float)
            + step * normal
            + k * shift_per_slice[0] * row_dir
            + k * shift_per_slice[1] * col_dir
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Phantom", "MEDAI-TEST"
        ds.SeriesDescription = "synthetic CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(spacing_xyz[1]), float(spacing_xyz[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing_xyz[2])
        ds.Rows, ds.Columns = hu.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        stored = np.round((hu - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
