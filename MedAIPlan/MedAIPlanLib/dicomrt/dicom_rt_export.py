"""DICOM-RT export with pydicom: RTDOSE from a dose grid, RTSTRUCT from masks, RTPLAN from beams.

Inputs are KJI arrays with a :class:`Geometry` (RAS or LPS; written as LPS, DICOM's patient
system). Dose in Gy is stored as uint32 x DoseGridScaling (so a round trip reproduces it to half
a scaling step). RTSTRUCT contours are traced per k-slice at the 0.5 level of each segment's own mask
(marching squares; segments may overlap), so re-rasterising them at voxel centres returns the same
voxels. Angles are checked (0 <= angle < 360, :func:`beams.check_angles`), never wrapped.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from skimage.measure import find_contours

from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.dose.beams import check_angles

RTDOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.5"


def _ds_string(value: float) -> str:
    """A DICOM DS string (<= 16 characters) for ``value``."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4g}"


def _base_dataset(sop_class: str, modality: str, patient: dict | None, study_uid: str | None,
                  frame_of_reference_uid: str | None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    now = datetime.datetime.now(datetime.timezone.utc)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    patient = patient or {}
    ds.PatientName = patient.get("name", "MedAI^Phantom")
    ds.PatientID = patient.get("id", "MEDAI0001")
    ds.PatientBirthDate = patient.get("birth_date", "")
    ds.PatientSex = patient.get("sex", "O")
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "MedAI"
    ds.InstanceNumber = 1
    return ds


def rtdose_dataset(dose_gy: np.ndarray, geometry: Geometry, summation: str = "PLAN", patient: dict | None = None,
                   study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                   bits: int = 32, plan_uid: str | None = None) -> Dataset:
    """An RTDOSE dataset (uint32 or uint16 x DoseGridScaling, Gy, PHYSICAL) for a KJI dose grid.

    ``plan_uid`` (SOP Instance UID of the RTPLAN) is referenced when given; without it a PLAN/BEAM
    summation cannot be stated (DICOM requires the reference), so the summation becomes MANUAL.
    """
    if bits not in (16, 32):
        raise ValueError(f"RTDOSE pixels are 16 or 32 bits, not {bits}.")
    dose = np.asarray(dose_gy, dtype=np.float64)
    if dose.ndim != 3:
        raise ValueError(f"An RTDOSE needs a 3D dose grid, got shape {dose.shape}.")
    if np.nanmin(dose) < 0:
        raise ValueError("RTDOSE cannot store negative doses; clip the dose at 0 Gy first.")
    lps = geometry.to_space("LPS")
    row_dir, col_dir, k_dir = lps.direction[:, 0], lps.direction[:, 1], lps.direction[:, 2]
    normal = np.cross(row_dir, col_dir)
    sign = 1.0 if float(np.dot(normal, k_dir)) > 0 else -1.0
    if abs(abs(float(np.dot(normal, k_dir))) - 1.0) > 1e-4:
        raise ValueError("RTDOSE frames must be perpendicular to the image plane (the grid is sheared).")
    top = float(np.nanmax(dose)) if dose.size else 0.0
    scaling_text = _ds_string(top / (4.0e9 if bits == 32 else 65000.0) if top > 0 else 1.0)
    scaling = float(scaling_text)
    pixels = np.round(np.nan_to_num(dose) / scaling).astype(np.uint32 if bits == 32 else np.uint16)
    ds = _base_dataset(RTDOSE_SOP_CLASS, "RTDOSE", patient, study_uid, frame_of_reference_uid)
    ds.ImagePositionPatient = [_ds_string(v) for v in lps.origin]
    ds.ImageOrientationPatient = [_ds_string(v) for v in np.concatenate([row_dir, col_dir])]
    ds.PixelSpacing = [_ds_string(lps.spacing[1]), _ds_string(lps.spacing[0])]
    ds.SliceThickness = _ds_string(lps.spacing[2])
    nk, nj, ni = dose.shape
    ds.NumberOfFrames = nk
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds_string(sign * k * lps.spacing[2]) for k in range(nk)]
    ds.Rows, ds.Columns = nj, ni
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    if plan_uid:
        ref_plan = Dataset()
        ref_plan.ReferencedSOPClassUID = RTPLAN_SOP_CLASS
        ref_plan.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = Sequence([ref_plan])
    elif summation not in ("RECORD", "MANUAL"):
        summation = "MANUAL"
    ds.DoseSummationType = summation
    ds.DoseGridScaling = scaling_text
    ds.PixelData = pixels.tobytes()
    return ds


def _slice_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(mask2d.astype(np.uint8), 1)
    return [c - 1.0 for c in find_contours(padded, 0.5) if len(c) >= 3]  # (row=j, col=i)


def rtstruct_dataset(labels: np.ndarray, geometry: Geometry, segments: list[tuple[int, str, tuple | None]],
                     patient: dict | None = None, study_uid: str | None = None,
                     frame_of_reference_uid: str | None = None, label: str = "MedAI") -> Dataset:
    """An RTSTRUCT dataset with one ROI per ``(label value, name, colour 0..1 or None)`` of a KJI label map.

    A label map cannot hold overlapping structures; use :func:`rtstruct_from_masks` for those.
    """
    labels = np.asarray(labels)
    masks = [(name, color, labels == value) for value, name, color in segments]
    return rtstruct_from_masks(masks, geometry, patient, study_uid, frame_of_reference_uid, label)


def _contour_items(mask: np.ndarray, lps: Geometry) -> list[Dataset]:
    """CLOSED_PLANAR contour items (LPS mm) of a KJI mask, traced per k-slice at the 0.5 level."""
    items = []
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        for c in _slice_contours(mask[k]):
            ijk = np.column_stack([c[:, 1], c[:, 0], np.full(len(c), float(k))])
            pts = lps.index_to_point(ijk)
            if np.allclose(pts[0], pts[-1]):
                pts = pts[:-1]
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(pts)
            item.ContourData = [_ds_string(v) for v in np.round(pts, 4).ravel()]
            items.append(item)
    return items


def rtstruct_from_masks(masks: Iterable[tuple[str, tuple | None, np.ndarray]], geometry: Geometry,
                        patient: dict | None = None, study_uid: str | None = None,
                        frame_of_reference_uid: str | None = None, label: str = "MedAI") -> Dataset:
    """An RTSTRUCT dataset with one ROI per ``(name, colour 0..1 or None, boolean KJI mask)``, in order.

    Every mask becomes its own ROI (ROI numbers 1..N in the given order), so overlapping and nested
    structures are all kept; an empty mask gives an ROI without contours. ``masks`` may be a generator
    (one mask in memory at a time). ``geometry`` (RAS or LPS) is the masks' grid; contours are written in LPS.
    """
    lps = geometry.to_space("LPS")
    ds = _base_dataset(RTSTRUCT_SOP_CLASS, "RTSTRUCT", patient, study_uid, frame_of_reference_uid)
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = ds.StudyDate
    ds.StructureSetTime = ds.StudyTime
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = ds.FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])
    roi_seq, contour_seq, obs_seq = [], [], []
    for number, (name, color, mask) in enumerate(masks, start=1):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(lps.shape_kji):
            raise ValueError(f"Mask of '{name}' has shape {mask.shape}, the grid {tuple(lps.shape_kji)}.")
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ds.FrameOfReferenceUID
        roi.ROIName = str(name)[:64]
        roi.ROIGenerationAlgorithm = "SEMIAUTOMATIC"
        roi_seq.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [int(round(255 * float(c))) for c in (color or (1.0, 0.0, 0.0))[:3]]
        contours = _contour_items(mask, lps)
        if contours:
            rc.ContourSequence = Sequence(contours)
        contour_seq.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def rtplan_dataset(beams: list[dict], label: str = "MedAI plan", fractions: int = 1, patient: dict | None = None,
                   study_uid: str | None = None, frame_of_reference_uid: str | None = None,
                   structure_set_uid: str | None = None, machine: str = "MedAI", prescription_gy: float | None = None,
                   target_roi_number: int | None = None, dose_uid: str | None = None,
                   patient_position: str = "HFS") -> Dataset:
    """A STATIC photon RTPLAN: beams as dicts with name, gantry_deg, couch_deg, collimator_deg,
    isocenter_lps (mm), meterset_mu (per fraction; omitted when None), energy_mv, sad_mm and optional
    jaws_mm {'X': [x1, x2], 'Y': [y1, y2]} (asymmetric jaws, mm at the isocentre; see :mod:`rtplan_beams`).

    With ``prescription_gy`` a target dose reference (TargetPrescriptionDose, the ROI ``target_roi_number``
    of the referenced structure set when given) is added; ``dose_uid`` references the plan's RTDOSE
    from the fraction group. One patient setup (``patient_position``)."""
    ds = _base_dataset(RTPLAN_SOP_CLASS, "RTPLAN", patient, study_uid, frame_of_reference_uid)
    ds.RTPlanLabel = label[:16]
    ds.RTPlanDate = ds.StudyDate
    ds.RTPlanTime = ds.StudyTime
    ds.RTPlanGeometry = "PATIENT" if structure_set_uid else "TREATMENT_DEVICE"
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = patient_position
    ds.PatientSetupSequence = Sequence([setup])
    if prescription_gy is not None:
        ds.DoseReferenceSequence = Sequence([_dose_reference(prescription_gy, target_roi_number, structure_set_uid)])
    if structure_set_uid:
        ref_ss = Dataset()
        ref_ss.ReferencedSOPClassUID = RTSTRUCT_SOP_CLASS
        ref_ss.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = Sequence([ref_ss])
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = int(fractions)
    fg.NumberOfBeams = len(beams)
    fg.NumberOfBrachyApplicationSetups = 0
    refs, seq = [], []
    for n, b in enumerate(beams, start=1):
        refs.append(_referenced_beam(n, b))
        seq.append(_static_beam(n, b, machine))
    fg.ReferencedBeamSequence = Sequence(refs)
    if dose_uid:
        ref_dose = Dataset()
        ref_dose.ReferencedSOPClassUID = RTDOSE_SOP_CLASS
        ref_dose.ReferencedSOPInstanceUID = dose_uid
        fg.ReferencedDoseSequence = Sequence([ref_dose])
    ds.FractionGroupSequence = Sequence([fg])
    ds.BeamSequence = Sequence(seq)
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _dose_reference(prescription_gy: float, target_roi_number: int | None, structure_set_uid: str | None) -> Dataset:
    """The plan's target dose reference: a VOLUME (the ROI) when the structure set and ROI are known, else a SITE."""
    ref = Dataset()
    ref.DoseReferenceNumber = 1
    ref.DoseReferenceUID = generate_uid()
    ref.DoseReferenceStructureType = "VOLUME" if target_roi_number is not None and structure_set_uid else "SITE"
    if ref.DoseReferenceStructureType == "VOLUME":
        ref.ReferencedROINumber = int(target_roi_number)
    ref.DoseReferenceDescription = "target"
    ref.DoseReferenceType = "TARGET"
    ref.TargetPrescriptionDose = _ds_string(float(prescription_gy))
    return ref


def _referenced_beam(n: int, b: dict) -> Dataset:
    """The fraction group's reference to beam ``n`` (with its meterset in MU when given)."""
    ref = Dataset()
    ref.ReferencedBeamNumber = n
    if b.get("meterset_mu") is not None:
        ref.BeamMeterset = _ds_string(float(b["meterset_mu"]))
    return ref


def _static_beam(n: int, b: dict, machine: str) -> Dataset:
    """Beam ``n`` of the BeamSequence: a STATIC photon beam with asymmetric X/Y jaws and two control points."""
    beam = Dataset()
    beam.BeamNumber = n
    beam.BeamName = str(b.get("name", f"Beam {n}"))[:64]
    angles = {kind: check_angles(b.get(f"{kind}_deg", 0.0), f"RTPLAN beam '{beam.BeamName}' {kind} angle")[0]
              for kind in ("gantry", "couch", "collimator")}
    beam.BeamType = "STATIC"
    beam.TreatmentMachineName = machine
    beam.RadiationType = "PHOTON"
    beam.TreatmentDeliveryType = "TREATMENT"
    beam.SourceAxisDistance = _ds_string(float(b.get("sad_mm", 1000.0)))
    beam.PrimaryDosimeterUnit = "MU"
    beam.NumberOfWedges = 0
    beam.NumberOfCompensators = 0
    beam.NumberOfBoli = 0
    beam.NumberOfBlocks = 0
    beam.ReferencedPatientSetupNumber = 1
    devices = []
    for kind in ("ASYMX", "ASYMY"):
        dev = Dataset()
        dev.RTBeamLimitingDeviceType = kind
        dev.NumberOfLeafJawPairs = 1
        devices.append(dev)
    beam.BeamLimitingDeviceSequence = Sequence(devices)
    beam.FinalCumulativeMetersetWeight = "1"
    beam.NumberOfControlPoints = 2
    beam.ControlPointSequence = Sequence([_first_control_point(b, angles), _last_control_point()])
    return beam


def _first_control_point(b: dict, angles: dict[str, float]) -> Dataset:
    """Control point 0: energy, angles (degrees), isocentre (LPS mm) and jaw positions (mm at the isocentre)."""
    jaws = b.get("jaws_mm") or {"X": [-50.0, 50.0], "Y": [-50.0, 50.0]}
    cp = Dataset()
    cp.ControlPointIndex = 0
    cp.CumulativeMetersetWeight = "0"
    cp.NominalBeamEnergy = _ds_string(float(b.get("energy_mv", 6.0)))
    cp.GantryAngle = _ds_string(angles["gantry"])
    cp.GantryRotationDirection = "NONE"
    cp.BeamLimitingDeviceAngle = _ds_string(angles["collimator"])
    cp.BeamLimitingDeviceRotationDirection = "NONE"
    cp.PatientSupportAngle = _ds_string(angles["couch"])
    cp.PatientSupportRotationDirection = "NONE"
    cp.IsocenterPosition = [_ds_string(v) for v in b.get("isocenter_lps", (0.0, 0.0, 0.0))]
    positions = []
    for kind in ("X", "Y"):
        pos = Dataset()
        pos.RTBeamLimitingDeviceType = "ASYM" + kind
        pos.LeafJawPositions = [_ds_string(v) for v in jaws.get(kind, jaws.get("ASYM" + kind, [-50.0, 50.0]))]
        positions.append(pos)
    cp.BeamLimitingDevicePositionSequence = Sequence(positions)
    return cp


def _last_control_point() -> Dataset:
    """Control point 1: the full meterset, nothing changed."""
    cp = Dataset()
    cp.ControlPointIndex = 1
    cp.CumulativeMetersetWeight = "1"
    return cp


def write_dataset(ds: Dataset, path) -> Path:
    """Write a dataset as a DICOM Part-10 file (with preamble and file meta)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
