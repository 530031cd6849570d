"""DICOM-RT import/export: feet-first and non-square-pixel RTDOSE, RTSTRUCT, RTPLAN, validity, de-identification."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from MedAICommonLib import bridge
from MedAIPlanLib.dicomrt.deidentify import UidMap, deidentify_dataset
from MedAIPlanLib.dicomrt.dicom_rt import read_dataset, read_rtdose, read_rtplan, read_rtstruct
from MedAIPlanLib.dicomrt.dicom_rt_export import rtdose_dataset, rtplan_dataset, rtstruct_dataset, write_dataset
from MedAIPlanLib.evaluation.dose_volume import DOSE_VOLUME_ATTRIBUTE
from MedAIPlanLib.evaluation.dvh import contour_volume_cc
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic


def test_feet_first_rtdose_geometry(shared_data):
    """FFS: i runs to patient right (-x), frames run inferior (-z), as GDCM and PyMedPhys read it."""
    path = shared_data / "rt" / "pymedphys-data" / "RD.TBB_feet_in_supine.dcm"
    ds = pydicom.dcmread(path)
    rd = read_rtdose(path)
    assert rd.dose.shape == (81, 101, 101)
    ipp = np.array(ds.ImagePositionPatient, float)
    np.testing.assert_allclose(rd.geometry.index_to_point([0, 0, 0]), ipp)
    np.testing.assert_allclose(rd.geometry.index_to_point([1, 1, 1]), ipp + [-2.0, 2.0, -2.5])
    np.testing.assert_allclose(rd.dose, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    other = read_rtdose(shared_data / "rt" / "pymedphys-data" / "RD.TBC_feet_in_supine.dcm")
    assert other.geometry.same_grid(rd.geometry)


def test_non_square_pixels_and_negative_offsets(shared_data):
    """PixelSpacing (row, column) = (1.03125, 1.0079) mm; frames 0..-77.5 mm reordered to run +z."""
    path = shared_data / "rt" / "pymedphys-data" / "rtdose_non_square_pixels.dcm"
    ds = read_dataset(path)  # no file meta header
    rd = read_rtdose(path)
    spacing_i, spacing_j, spacing_k = rd.geometry.spacing
    assert spacing_i == pytest.approx(float(ds.PixelSpacing[1]))
    assert spacing_j == pytest.approx(float(ds.PixelSpacing[0]))
    offsets = np.array(ds.GridFrameOffsetVector, float)
    assert spacing_k == pytest.approx(abs(offsets[1] - offsets[0]), rel=1e-3)
    z = rd.geometry.index_to_point(np.array([[0, 0, k] for k in range(rd.dose.shape[0])], float))[:, 2]
    np.testing.assert_allclose(z, np.sort(float(ds.ImagePositionPatient[2]) + offsets), atol=0.05)
    # the last DICOM frame (most inferior) is our first slice
    np.testing.assert_allclose(rd.dose[0], ds.pixel_array[-1] * float(ds.DoseGridScaling), rtol=1e-6)


def test_single_frame_with_long_offset_vector(shared_data):
    rd = read_rtdose(shared_data / "rt" / "pydicom" / "rtdose_1frame.dcm")
    assert rd.dose.shape == (1, 10, 10)
    assert rd.units == "RELATIVE"


def test_rtstruct_import_end_capped_cylinder(scene, shared_data):
    """Nelms' SI cylinder (contours every 2 mm): rasterised with half-slice end caps = pi r^2 (h + 2 mm)."""
    path = shared_data / "rt" / "nelms-dvh-benchmark" / "structures" / "Cylinder_20_0.dcm"
    node = PlanEvaluationLogic(scene).import_rtstruct(path, pixel_mm=0.5)
    mask, geometry = bridge.segment_mask(node, bridge.segment_infos(node)[0].name)
    volume_cc = mask.sum() * float(np.prod(geometry.spacing)) / 1000.0
    assert abs(volume_cc - np.pi * 12.0**2 * 26.0 / 1000.0) < 0.02 * 11.76  # 0.5 mm pixel-centre sampling


def test_rtplan_beams(scene, shared_data):
    table, plan = PlanEvaluationLogic(scene).import_rtplan(shared_data / "rt" / "dicompyler-core" / "rtplan.dcm")
    cols = bridge.columns_from_table(table)
    assert cols["Gantry (deg)"] == [327.0, 0.0, 56.0, 150.0]
    assert cols["MU"] == [97.0, 87.0, 89.0, 94.0]
    assert plan["fractions"] == 7
    assert cols["Isocenter R (mm)"][0] == pytest.approx(-72.53, abs=0.01)


def test_export_round_trip_and_validity(tmp_path, shared_data):
    """RTDOSE/RTSTRUCT/RTPLAN written here re-import identically and pass dciodvfy when it is installed."""
    rd = read_rtdose(shared_data / "rt" / "pymedphys-data" / "RD.TBB_feet_in_supine.dcm")
    ds = rtdose_dataset(rd.dose, rd.geometry)
    back = read_rtdose(write_dataset(ds, tmp_path / "RD.dcm"))
    assert back.geometry.same_grid(rd.geometry, 1e-4)
    assert np.abs(back.dose - rd.dose).max() <= 0.5 * back.scaling + 1e-7
    labels = np.zeros((10, 30, 30), np.uint8)
    labels[2:8, 5:25, 8:20] = 1
    ss = rtstruct_dataset(labels, rd.geometry.with_shape((10, 30, 30)), [(1, "box", (0.0, 1.0, 0.0))])
    roi = read_rtstruct(write_dataset(ss, tmp_path / "RS.dcm"))[0]
    assert roi.name == "box"
    assert roi.color == (0.0, 1.0, 0.0)
    box_cc = labels.sum() * 2.0 * 2.0 * 2.5 / 1000.0
    assert abs(contour_volume_cc(roi.contours) - box_cc) < 0.02 * box_cc
    plan = rtplan_dataset(
        [{"name": "AP", "gantry_deg": 0.0, "meterset_mu": 100.0, "isocenter_lps": (1.0, 2.0, 3.0)}],
        structure_set_uid=ss.SOPInstanceUID,
    )
    beam = read_rtplan(write_dataset(plan, tmp_path / "RP.dcm"))["beams"][0]
    assert (beam.gantry_deg, beam.meterset_mu, beam.isocenter_lps) == (0.0, 100.0, (1.0, 2.0, 3.0))
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed; pydicom re-reading checked above")
    write_dataset(rtdose_dataset(rd.dose, rd.geometry, bits=16), tmp_path / "RD16.dcm")  # dciodvfy cannot parse 32-bit
    for name in ("RD16.dcm", "RS.dcm", "RP.dcm"):
        run = subprocess.run(["dciodvfy", str(tmp_path / name)], capture_output=True, text=True, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)


def test_logic_import_marks_dose(scene, shared_data):
    node = PlanEvaluationLogic(scene).import_rtdose(shared_data / "rt" / "pydicom" / "rtdose.dcm")
    assert node.GetAttribute(DOSE_VOLUME_ATTRIBUTE) == "1"
    assert node.GetDisplayNode().GetColorNode().GetName() == "Dose_ColorTable"


def test_deidentify_keeps_references(shared_data):
    uid_map = UidMap("test")
    plan = pydicom.dcmread(shared_data / "rt" / "dicompyler-core" / "rtplan.dcm")
    ss = pydicom.dcmread(shared_data / "rt" / "dicompyler-core" / "rtss.dcm")
    old_ss_uid = ss.SOPInstanceUID
    deidentify_dataset(plan, uid_map)
    deidentify_dataset(ss, uid_map)
    assert ss.SOPInstanceUID != old_ss_uid
    assert plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == ss.SOPInstanceUID
    assert plan.FrameOfReferenceUID == ss.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert str(ss.PatientName) == "ANONYMOUS"
    assert ss.PatientIdentityRemoved == "YES"
    assert "InstitutionName" not in ss


def _plan_phantom(scene):
    """Dose node of a 5-beam MedAI plan (plan attributes as MedAIPlanLogic writes them) and its structures."""
    from MedAICommonLib.bridge.segmentations import SegmentInfo
    from MedAICommonLib.geometry import Geometry

    geometry = Geometry(spacing=(3.0, 3.0, 3.0), origin=(-60.0, -60.0, -45.0), space="LPS", shape_kji=(30, 40, 40))
    kk, jj, ii = np.indices(geometry.shape_kji)
    pts = geometry.index_to_point(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1)).reshape(*geometry.shape_kji, 3)
    labels = np.zeros(geometry.shape_kji, np.uint8)
    labels[np.linalg.norm(pts, axis=-1) < 50] = 1  # body
    labels[np.linalg.norm(pts - [10.0, -5.0, 3.0], axis=-1) < 14] = 2  # ptv
    dose = (60.0 * np.exp(-np.sum((pts - [10.0, -5.0, 3.0]) ** 2, -1) / (2 * 20.0**2))).astype(np.float32)
    seg = bridge.create_segmentation(
        scene,
        labels,
        geometry.to_space("RAS"),
        [SegmentInfo(1, "body", (0.8, 0.6, 0.5)), SegmentInfo(2, "ptv", (1.0, 0.0, 0.0))],
        "phantom structures",
    )
    node = bridge.create_volume(scene, dose, geometry.to_space("RAS"), "phantom dose")
    for key, value in {
        "Target": "ptv",
        "PrescriptionGy": "60.0",
        "Fractions": "30",
        "BixelWidthMm": "5.0",
        "GantryAngles": "0,72,144,216,288",
        "CouchAngles": "0,0,0,0,20",
        "IsocenterLPS": "10.00,-5.00,3.00",
    }.items():
        node.SetAttribute(f"MedAIPlan.{key}", value)
    return node, seg


def test_medai_plan_rtplan_round_trip(scene, tmp_path):
    """A MedAI plan (dose-engine beams, bixel weights) -> RTPLAN/RTSTRUCT/RTDOSE -> the same beam geometry back."""
    from MedAIPlanLib.dicomrt.rtplan_beams import field_jaws_mm, medai_beams_from_rtplan

    dose, seg = _plan_phantom(scene)
    logic = PlanEvaluationLogic(scene)
    beams = logic.plan_beams(dose, seg)
    assert [b.gantry_deg for b in beams] == [0, 72, 144, 216, 288]
    assert beams[4].couch_deg == 20
    weights = np.random.default_rng(3).uniform(0.5, 2.0, sum(b.num_bixels for b in beams))
    paths = logic.export_plan(tmp_path, dose, seg, beams=beams, weights=weights, mu_per_weight=2.0)
    plan = read_rtplan(paths["RTPLAN"])
    assert plan["fractions"] == 30
    assert len(plan["beams"]) == 5
    start = 0
    for original, rt in zip(beams, plan["beams"]):
        assert (rt.gantry_deg, rt.couch_deg, rt.collimator_deg, rt.sad_mm) == (
            original.gantry_deg,
            original.couch_deg,
            0.0,
            original.sad,
        )
        np.testing.assert_allclose(rt.isocenter_lps, [10.0, -5.0, 3.0], atol=1e-6)
        jaws = field_jaws_mm(original)
        np.testing.assert_allclose(rt.jaws_mm["ASYMX"], jaws["X"], atol=1e-6)
        np.testing.assert_allclose(rt.jaws_mm["ASYMY"], jaws["Y"], atol=1e-6)
        assert rt.meterset_mu == pytest.approx(2.0 * weights[start : start + original.num_bixels].sum(), rel=1e-6)
        start += original.num_bixels
    # back to MedAI beams for recomputation: same angles/isocentre/SAD, a grid covering every original bixel
    for original, back in zip(beams, medai_beams_from_rtplan(plan["beams"], bixel_width=5.0)):
        assert (back.gantry_deg, back.couch_deg, back.sad) == (original.gantry_deg, original.couch_deg, original.sad)
        np.testing.assert_allclose(back.source, original.source, atol=1e-6)
        have = {tuple(np.round(p, 3)) for p in back.ray_pos}
        assert all(tuple(np.round(p, 3)) in have for p in original.ray_pos)
    # references: plan -> structure set and dose; dose -> plan; prescription on the target ROI
    rp, rs, rd = (pydicom.dcmread(paths[m]) for m in ("RTPLAN", "RTSTRUCT", "RTDOSE"))
    assert rp.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert rp.FractionGroupSequence[0].ReferencedDoseSequence[0].ReferencedSOPInstanceUID == rd.SOPInstanceUID
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    ref = rp.DoseReferenceSequence[0]
    assert float(ref.TargetPrescriptionDose) == 60.0
    roi_names = {int(r.ROINumber): r.ROIName for r in rs.StructureSetROISequence}
    assert roi_names[int(ref.ReferencedROINumber)] == "ptv"
    assert rp.FrameOfReferenceUID == rs.FrameOfReferenceUID == rd.FrameOfReferenceUID
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed; pydicom re-reading checked above")
    run = subprocess.run(["dciodvfy", paths["RTPLAN"]], capture_output=True, text=True, check=False)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors


def test_rtstruct_on_oblique_reference_grid(scene, tmp_path):
    """RTSTRUCT contours rasterised on an oblique reference volume match the axial result resampled there."""
    from MedAICommonLib.geometry import Geometry, rotation_matrix

    axial = Geometry(spacing=(1.0, 1.0, 2.0), origin=(-20.0, -25.0, -10.0), space="LPS", shape_kji=(21, 41, 41))
    kk, jj, ii = np.indices(axial.shape_kji)
    pts = axial.index_to_point(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1)).reshape(*axial.shape_kji, 3)
    labels = (np.linalg.norm((pts - [0.0, -5.0, 10.0]) / [15.0, 12.0, 14.0], axis=-1) < 1.0).astype(np.uint8)
    path = write_dataset(rtstruct_dataset(labels, axial, [(1, "ellipsoid", (0.0, 1.0, 0.0))]), tmp_path / "RS.dcm")
    contours = read_rtstruct(path)[0].contours
    logic = PlanEvaluationLogic(scene)
    on_axial = bridge.segment_mask(logic.import_rtstruct(path), "ellipsoid", None)
    direction = rotation_matrix("z", 35.0) @ rotation_matrix("x", 25.0)
    spacing, shape = np.array([1.1, 1.2, 1.3]), (36, 40, 44)
    origin = np.array([0.0, -5.0, 10.0]) - direction @ (spacing * np.array(shape[::-1]) / 2.0)
    oblique = Geometry(tuple(spacing), tuple(origin), direction, "LPS", shape)
    reference = bridge.create_volume(scene, np.zeros(shape, np.float32), oblique.to_space("RAS"), "oblique CT")
    seg = logic.import_rtstruct(path, reference_node=reference)
    mask, mask_geometry = bridge.segment_mask(seg, "ellipsoid", oblique.to_space("RAS"))
    assert mask_geometry.same_grid(oblique.to_space("RAS"), 1e-3)
    # the axial raster resampled (nearest) at the oblique voxel centres
    kk, jj, ii = np.indices(shape)
    centres = oblique.index_to_point(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1))
    ax_mask, ax_geometry = on_axial
    ijk = np.round(ax_geometry.to_space("LPS").point_to_index(centres)).astype(int)
    valid = np.all((ijk >= 0) & (ijk < np.array(ax_mask.shape[::-1])), axis=1)
    resampled = np.zeros(len(centres), bool)
    resampled[valid] = ax_mask[ijk[valid, 2], ijk[valid, 1], ijk[valid, 0]]
    resampled = resampled.reshape(shape)
    dice = 2.0 * np.sum(mask & resampled) / (mask.sum() + resampled.sum())
    assert dice >= 0.95
    volume_cc = mask.sum() * float(np.prod(spacing)) / 1000.0
    assert abs(volume_cc - contour_volume_cc(contours)) <= 0.02 * contour_volume_cc(contours)
