"""DICOM-RT structures keep every ROI through import and export; beam angles are checked where they enter.

Real files: dicompyler-core's breast RTSTRUCT (nested ROIs: Tumor Bed inside Breast inside BODY, and an
empty ROI "Areola"), the TG119 phantom of pyRadPlan (Core and OuterTarget inside BODY, so its
segmentation has several labelmap layers) and dicompyler-core's RTPLAN.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import segment_masks
from MedAICommonLib.cli.main import main
from MedAICommonLib.notices import collect_warnings
from MedAIPlanLib.dicomrt.dicom_rt import read_rtplan, read_rtstruct
from MedAIPlanLib.dicomrt.dicom_rt_export import rtplan_dataset
from MedAIPlanLib.evaluation.dvh import contour_volume_cc
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic
from MedAIPlanLib.logic import MedAIPlanLogic

RTSS_ROIS = ["BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed", "Tumor Bed Block"]
TG119_STRUCTURES = ["Core", "OuterTarget", "BODY"]


def _volumes_cc(masks: dict, geometry) -> dict[str, float]:
    return {name: float(mask.sum()) * float(np.prod(geometry.spacing)) / 1000.0 for name, mask in masks.items()}


def _layer_count(node) -> int:
    return node.GetSegmentation().GetNumberOfLayers()


@pytest.fixture
def rtss(shared_data):
    """dicompyler-core's breast RTSTRUCT."""
    return shared_data / "rt" / "dicompyler-core" / "rtss.dcm"


@pytest.fixture
def tg119_files(scene, shared_data, tmp_path):
    """TG119's CT and structures (Core and OuterTarget inside BODY: overlapping, several layers) as files."""
    ct, seg = MedAIPlanLogic(scene).load_matrad(shared_data / "rt" / "pyRadPlan" / "TG119.mat")
    masks, geometry = segment_masks(seg)
    return {
        "ct": bridge.save_node(ct, tmp_path / "TG119_ct.nrrd"),
        "segmentation": bridge.save_node(seg, tmp_path / "TG119.seg.nrrd"),
        "masks": masks,
        "geometry": geometry,
        "layers": _layer_count(seg),
    }


def test_rtss_import_keeps_nested_structures_and_the_empty_roi(scene, rtss):
    """Every ROI becomes a segment with its own mask: nested ROIs keep their contour volume (within 1 %;
    measured 0.003-0.1 % on the 1 mm grid) and the empty Areola is an empty segment, with a warning."""
    contours = {r.name: r.contours for r in read_rtstruct(rtss)}
    with collect_warnings() as warnings:
        node = PlanEvaluationLogic(scene).import_rtstruct(rtss, pixel_mm=1.0)
    assert [s.name for s in bridge.segment_infos(node)] == RTSS_ROIS
    masks, geometry = segment_masks(node)
    volumes = _volumes_cc(masks, geometry)
    for name in ("Tumor Bed", "Breast", "BODY", "Heart"):
        expected = contour_volume_cc(contours[name])
        assert abs(volumes[name] - expected) <= 0.01 * expected, (name, volumes[name], expected)
    assert np.all(masks["BODY"][masks["Breast"]])  # nested: Tumor Bed in Breast in BODY
    assert np.all(masks["Breast"][masks["Tumor Bed"]])
    assert _layer_count(node) >= 3
    assert volumes["Areola"] == 0.0
    assert any("Areola" in w and "empty segment" in w for w in warnings)


def test_medai_rt_import_report_and_file_keep_every_structure(rtss, tmp_path, scene, capsys):
    """``medai rt-import``: the saved .seg.nrrd and the report hold every ROI with its contour volume."""
    report = tmp_path / "import.json"
    assert main(["rt-import", str(rtss), "--output-dir", str(tmp_path), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert any("Areola" in w for w in data["warnings"])
    assert "warning: RTSTRUCT ROI 'Areola'" in capsys.readouterr().err
    reported = data["metrics"]["rtss_structures_cc"]
    assert list(reported) == RTSS_ROIS
    saved = bridge.load_segmentation(scene, tmp_path / "rtss.seg.nrrd")
    volumes = _volumes_cc(*segment_masks(saved))
    contours = {r.name: r.contours for r in read_rtstruct(rtss)}
    for name in ("Tumor Bed", "Breast", "BODY"):
        expected = contour_volume_cc(contours[name])
        assert abs(volumes[name] - expected) <= 0.01 * expected, name
        assert reported[name] == pytest.approx(volumes[name], rel=1e-9)
    assert volumes["Areola"] == 0.0


def test_tg119_segmentation_exports_every_layer_and_round_trips(tg119_files, tmp_path):
    """``medai rt-export`` of TG119's layered segmentation writes contours for every segment; ``medai
    rt-import`` gives the same names in the same order and, on the CT's grid, the same voxels exactly
    (contours traced at the 0.5 level of each mask are re-rasterised at the voxel centres). On the default
    1 mm grid the volumes agree within 3 % (the traced polygons cut each convex voxel corner: -1.7 % for
    the 1,320-voxel Core)."""
    assert tg119_files["layers"] >= 2
    out = tmp_path / "rt"
    assert (
        main(
            [
                "rt-export",
                str(out),
                "--segmentation",
                str(tg119_files["segmentation"]),
                "--report",
                str(tmp_path / "export.json"),
            ]
        )
        == 0
    )
    contours = json.loads((tmp_path / "export.json").read_text())["metrics"]["structure_contours"]
    assert list(contours) == TG119_STRUCTURES
    rois = {r.name: r for r in read_rtstruct(out / "RTSTRUCT.dcm")}
    masks, geometry = tg119_files["masks"], tg119_files["geometry"]
    for name, mask in masks.items():  # one contour or more on every slice the mask touches
        assert contours[name] >= int(mask.any(axis=(1, 2)).sum()), name
        assert len(rois[name].contours) == contours[name]
    original = _volumes_cc(masks, geometry)

    assert (
        main(
            [
                "rt-import",
                str(out / "RTSTRUCT.dcm"),
                "--reference",
                str(tg119_files["ct"]),
                "--output-dir",
                str(tmp_path / "on_ct"),
                "--report",
                str(tmp_path / "on_ct.json"),
            ]
        )
        == 0
    )
    back = json.loads((tmp_path / "on_ct.json").read_text())["metrics"]["RTSTRUCT_structures_cc"]
    assert list(back) == TG119_STRUCTURES
    for name in TG119_STRUCTURES:
        assert back[name] == pytest.approx(original[name], rel=1e-9)

    assert (
        main(
            [
                "rt-import",
                str(out / "RTSTRUCT.dcm"),
                "--output-dir",
                str(tmp_path / "fine"),
                "--report",
                str(tmp_path / "fine.json"),
            ]
        )
        == 0
    )
    fine = json.loads((tmp_path / "fine.json").read_text())["metrics"]["RTSTRUCT_structures_cc"]
    assert list(fine) == TG119_STRUCTURES
    for name in TG119_STRUCTURES:
        assert abs(fine[name] - original[name]) <= 0.03 * original[name], (name, fine[name], original[name])


@pytest.mark.slow  # a full TG119 RTSTRUCT round trip (about 8 s)
def test_tg119_round_trip_on_the_ct_grid_is_voxel_exact(scene, tg119_files, tmp_path):
    """Logic level: export, re-import on the CT; every segment's mask comes back voxel for voxel. A
    segmentation without a reference geometry exports the same contours."""
    logic = PlanEvaluationLogic(scene)
    ct = bridge.load_volume(scene, tg119_files["ct"])
    seg = bridge.load_segmentation(scene, tg119_files["segmentation"])
    paths = logic.export_rt(tmp_path, segmentation_node=seg)
    back = logic.import_rtstruct(paths["RTSTRUCT"], reference_node=ct)
    masks, _ = segment_masks(back, tg119_files["geometry"])
    assert list(masks) == TG119_STRUCTURES
    for name, mask in tg119_files["masks"].items():
        assert np.array_equal(masks[name], mask), name
    # without a reference geometry the grid is the union of all segments, not the first one's box
    counts = {r.name: len(r.contours) for r in read_rtstruct(paths["RTSTRUCT"])}
    seg.GetSegmentation().SetConversionParameter("Reference image geometry", "")
    again = logic.export_rt(tmp_path / "no_reference", segmentation_node=seg)
    assert {r.name: len(r.contours) for r in read_rtstruct(again["RTSTRUCT"])} == counts


def test_gantry_400_refused_by_medai_plan(shared_data, tmp_path, capsys):
    """``--gantry-angles 0,400``: refused before any work, naming the angle and the valid range."""
    report = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "--matrad",
            str(shared_data / "rt" / "pyRadPlan" / "TG119.mat"),
            "--target",
            "OuterTarget",
            "--prescription",
            "50",
            "--gantry-angles",
            "0,400",
            "--output-dose",
            str(tmp_path / "d.nrrd"),
            "--report",
            str(report),
        ]
    )
    assert code != 0
    err = capsys.readouterr().err
    assert "--gantry-angles: 400 degrees is outside 0 <= angle < 360" in err
    assert "refused, not wrapped" in err
    assert not (tmp_path / "d.nrrd").exists()


def test_gantry_400_refused_by_rt_export_and_the_logic(scene, tg119_files, tmp_path, capsys):
    """``medai rt-export --gantry 400`` and the plan Logic refuse the angle instead of writing 40."""
    ct = bridge.load_volume(scene, tg119_files["ct"])
    seg = bridge.load_segmentation(scene, tg119_files["segmentation"])
    code = main(
        [
            "rt-export",
            str(tmp_path / "rt"),
            "--dose",
            str(tg119_files["ct"]),
            "--segmentation",
            str(tg119_files["segmentation"]),
            "--target",
            "OuterTarget",
            "--gantry",
            "0,400",
        ]
    )
    assert code != 0
    assert "--gantry: 400 degrees is outside 0 <= angle < 360" in capsys.readouterr().err
    assert not (tmp_path / "rt" / "RTPLAN.dcm").exists()
    with pytest.raises(ValueError, match="Gantry angle: 400 degrees is outside 0 <= angle < 360"):
        MedAIPlanLogic(scene).plan(ct, seg, "OuterTarget", 50.0, gantry_angles=[0, 400])
    with pytest.raises(ValueError, match="Couch angle: -20 degrees"):
        PlanEvaluationLogic(scene).plan_beams(
            ct, seg, target="OuterTarget", gantry_angles=[0, 90], couch_angles=[0, -20]
        )


def test_rtplan_gantry_out_of_range_refused_on_write_and_read(shared_data, tmp_path):
    """RTPLAN export refuses 400 (it used to write 400 % 360 = 40); an RTPLAN holding 400 is refused on import."""
    with pytest.raises(ValueError, match="RTPLAN beam 'AP' gantry angle: 400 degrees"):
        rtplan_dataset([{"name": "AP", "gantry_deg": 400.0, "meterset_mu": 100.0}])
    good = read_rtplan(shared_data / "rt" / "dicompyler-core" / "rtplan.dcm")
    assert [b.gantry_deg for b in good["beams"]] == [327.0, 0.0, 56.0, 150.0]
    ds = pydicom.dcmread(shared_data / "rt" / "dicompyler-core" / "rtplan.dcm")
    ds.BeamSequence[1].ControlPointSequence[0].GantryAngle = "400"
    with pytest.raises(ValueError, match="RTPLAN beam '.*' gantry angle: 400 degrees is outside 0 <= angle < 360"):
        read_rtplan(ds)


def _rtss_subset(path, keep: dict[str, str], out):
    """The RTSTRUCT at ``path`` with only the ROIs named in ``keep``, renamed to its values, written to ``out``."""
    ds = pydicom.dcmread(path)
    numbers = {int(r.ROINumber): keep[r.ROIName] for r in ds.StructureSetROISequence if r.ROIName in keep}
    ds.StructureSetROISequence = [r for r in ds.StructureSetROISequence if int(r.ROINumber) in numbers]
    for r in ds.StructureSetROISequence:
        r.ROIName = numbers[int(r.ROINumber)]
    ds.ROIContourSequence = [c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) in numbers]
    ds.save_as(out)
    return out


def test_repeated_roi_names_and_cut_structures_are_flagged(scene, rtss, tmp_path):
    """Two ROIs named alike are both imported (the second as 'Tumor Bed (2)') with their contour volumes
    (within 1 %); a reference grid that cuts a structure is flagged (volume more than 5 % off); exporting a
    segmentation with repeated names is refused."""
    path = _rtss_subset(rtss, {"Tumor Bed": "Tumor Bed", "Tumor Bed Block": "Tumor Bed"}, tmp_path / "RS.dcm")
    contours = [r.contours for r in read_rtstruct(path)]
    logic = PlanEvaluationLogic(scene)
    with collect_warnings() as warnings:
        node = logic.import_rtstruct(path, pixel_mm=1.0)
    assert [s.name for s in bridge.segment_infos(node)] == ["Tumor Bed", "Tumor Bed (2)"]
    volumes = logic.structure_volumes_cc(node)
    for name, roi_contours in zip(volumes, contours):
        assert abs(volumes[name] - contour_volume_cc(roi_contours)) <= 0.01 * contour_volume_cc(roi_contours)
    assert warnings == ["RTSTRUCT ROI name 'Tumor Bed' is repeated (ROI 10); imported as 'Tumor Bed (2)'."]
    masks, geometry = segment_masks(node)
    nk = geometry.shape_kji[0]
    half = bridge.create_volume(
        scene,
        np.zeros((nk // 2, *geometry.shape_kji[1:]), np.int16),
        geometry.with_shape((nk // 2, *geometry.shape_kji[1:])),
        "CT covering half",
    )
    with collect_warnings() as warnings:
        logic.import_rtstruct(path, reference_node=half)
    assert any(w.startswith("RTSTRUCT ROI 'Tumor Bed': ") and "reference volume that covers" in w for w in warnings)
    node.GetSegmentation().GetNthSegment(1).SetName("Tumor Bed")
    with pytest.raises(ValueError, match=r"Segment name\(s\) \['Tumor Bed'\] repeat"):
        logic.export_rt(tmp_path / "out", segmentation_node=node)
