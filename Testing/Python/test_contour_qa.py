"""medai contour-qa: what a contour difference, or a model's uncertainty, does to the dose (issue 17).

A structure grown by exactly 2 mm on an analytic penumbra, TotalSegmentator's two models on a MedAI plan of the
same CT, and DVH bands from probability maps; every number is checked against a computation made here, on the
voxels, with no MedAI code.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.contour_qa.bands import check_band, parse_constraint, probability_band
from MedAIPlanLib.contour_qa.labels import KNOWN_LABEL_MAPS
from MedAIPlanLib.contour_qa.logic import ContourQALogic

SPACING = (1.0, 1.0, 2.0)  # i, j, k (mm): anisotropic, as CT grids are
SHAPE = (24, 64, 64)  # k, j, i
CENTRE = np.array([-6.0, 0.0, 0.0])  # RAS mm: in the field, its edge in the penumbra
RADIUS = 11.0
EDGE_NORMAL = np.array([1.0, 0.37, 0.21]) / np.linalg.norm([1.0, 0.37, 0.21])


def _grid() -> Geometry:
    origin = tuple(-(np.array(SHAPE[::-1]) - 1) / 2 * np.array(SPACING))
    return Geometry(spacing=SPACING, origin=origin, space="RAS", shape_kji=SHAPE)


def _points(geometry: Geometry) -> np.ndarray:
    k, j, i = np.indices(geometry.shape_kji)
    return geometry.index_to_point(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*SHAPE, 3)


def _penumbra(points: np.ndarray) -> np.ndarray:
    """A field edge, oblique to the grid so no two voxels share a dose: 60 Gy on its open side falling to 0 along
    ``EDGE_NORMAL`` (mostly R), 80-20 % width 6 ln(4) = 8.3 mm (Gy)."""
    return 60.0 / (1.0 + np.exp(points @ EDGE_NORMAL / 3.0))


def _ball(points: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(points - CENTRE, axis=-1) <= radius


def _surface_points_mm(mask: np.ndarray) -> np.ndarray:
    """Surface voxels (a 6-neighbour outside, the border outside too) as KJI points in mm, by shifting."""
    padded = np.pad(mask, 1)
    inner = padded.copy()
    for axis in range(3):
        for step in (1, -1):
            inner &= np.roll(padded, step, axis=axis)
    surface = (padded & ~inner)[1:-1, 1:-1, 1:-1]
    return np.argwhere(surface) * np.array(SPACING[::-1])


def _surface_dice_by_tree(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    pa, pb = _surface_points_mm(a), _surface_points_mm(b)
    da, db = cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]
    return (np.sum(da <= tolerance) + np.sum(db <= tolerance)) / (len(da) + len(db))


def _d95(doses: np.ndarray) -> float:
    return float(np.percentile(doses, 5.0))


@pytest.fixture
def penumbra_case(scene):
    """Dose node on the penumbra, a 11 mm ball and the same ball grown by exactly 2 mm as two structure sets."""
    geometry = _grid()
    points = _points(geometry)
    dose = _penumbra(points).astype(np.float32)
    reference, grown = _ball(points, RADIUS), _ball(points, RADIUS + 2.0)
    dose_node = bridge.create_volume(scene, dose, geometry, "penumbra dose")
    ref_node = bridge.create_segmentation_from_masks(scene, {"organ": reference}, geometry, "reference")
    cand_node = bridge.create_segmentation_from_masks(scene, {"Organ": grown}, geometry, "candidate")
    return dose, reference, grown, dose_node, ref_node, cand_node


def test_grown_by_2mm_on_known_gradient(scene, penumbra_case):
    """dDmean and dD95 within 1 % of the voxel values computed here; surface Dice equal to a k-d tree count."""
    dose, reference, grown, dose_node, ref_node, cand_node = penumbra_case
    result = ContourQALogic(scene).compare(dose_node, ref_node, cand_node, v_doses_gy=(30.0,))
    row = result.structures["organ"]
    assert row["candidate_name"] == "Organ"  # names match case-insensitively
    expected_dmean = float(dose[grown].mean() - dose[reference].mean())
    expected_d95 = _d95(dose[grown]) - _d95(dose[reference])
    assert abs(expected_dmean) > 1.0
    assert abs(expected_d95) > 2.0
    assert row["delta_Dmean_Gy"] == pytest.approx(expected_dmean, rel=0.01)
    assert row["delta_D95_Gy"] == pytest.approx(expected_d95, rel=0.01)
    v30 = 100.0 * (np.mean(dose[grown] >= 30.0) - np.mean(dose[reference] >= 30.0))
    assert row["delta_V30Gy_percent"] == pytest.approx(v30, abs=0.05)
    assert row["dice"] == pytest.approx(2 * reference.sum() / (reference.sum() + grown.sum()), rel=1e-9)
    for tolerance in (1.0, 3.0):
        logic_row = ContourQALogic(scene).compare(dose_node, ref_node, cand_node, tolerance_mm=tolerance)
        value = logic_row.structures["organ"]["surface_dice"]
        assert value == pytest.approx(_surface_dice_by_tree(grown, reference, tolerance), abs=1e-12)
    assert _surface_dice_by_tree(grown, reference, 3.0) > 0.9 > 0.5 > _surface_dice_by_tree(grown, reference, 1.0)
    # |dDmean| > 1 Gy: flagged, and its reason names the numbers
    assert row["dose_relevant"]
    assert "Dmean" in row["relevance_reasons"][0]


def test_unmatched_names_are_listed_and_no_match_is_refused(scene, penumbra_case, tmp_path):
    dose, reference, grown, dose_node, ref_node, _ = penumbra_case
    other = bridge.create_segmentation_from_masks(scene, {"liver": grown, "organ": grown}, _grid(), "other")
    with pytest.warns(UserWarning, match="liver"):
        result = ContourQALogic(scene).compare(dose_node, ref_node, other)
    assert result.unmatched_candidate == ["liver"]
    assert list(result.structures) == ["organ"]
    renamed = bridge.create_segmentation_from_masks(scene, {"OAR 1": grown}, _grid(), "renamed")
    with pytest.raises(ValueError, match="mapping"):
        ContourQALogic(scene).compare(dose_node, ref_node, renamed)
    mapping = {"organ": "OAR 1"}
    assert ContourQALogic(scene).compare(dose_node, ref_node, renamed, mapping).structures["organ"]["dice"] < 1.0
    with pytest.raises(ValueError, match="STRUCTURE:STAT<LIMIT"):
        parse_constraint("liver mean below 30")


def _soft_probability(points: np.ndarray, width_mm: float) -> np.ndarray:
    """A model's probability of the 11 mm ball: a logistic of the signed distance to its surface."""
    distance = np.linalg.norm(points - CENTRE, axis=-1) - RADIUS
    return (1.0 / (1.0 + np.exp(distance / width_mm))).astype(np.float32)


def test_bands_order_zero_width_and_sharpness():
    geometry = _grid()
    points = _points(geometry)
    dose = _penumbra(points)
    stats = ("Dmean", "D95", "D2", "D0.03cc")
    binary = probability_band(dose, geometry, _ball(points, RADIUS).astype(np.float32), geometry)
    for stat in stats:
        low, high = binary[f"{stat}_band_Gy"]
        assert low == high == binary["nominal"][stat]
    assert binary["nominal"]["Dmean"] == pytest.approx(float(dose[_ball(points, RADIUS)].mean()), rel=1e-9)
    widths = {}
    for width_mm in (0.5, 1.5, 3.0):
        band = probability_band(dose, geometry, _soft_probability(points, width_mm), geometry)
        for stat in stats:
            low, high = band[f"{stat}_band_Gy"]
            assert low <= band["nominal"][stat] <= high
        widths[width_mm] = {s: np.diff(band[f"{s}_band_Gy"])[0] for s in ("Dmean", "D95")}
    for stat in ("Dmean", "D95"):
        assert 0.0 < widths[0.5][stat] < widths[1.5][stat] < widths[3.0][stat]
    soft = probability_band(dose, geometry, _soft_probability(points, 3.0), geometry)
    low, high = soft["Dmean_band_Gy"]
    crossing = check_band(soft, parse_constraint(f"organ:Dmean<{(low + high) / 2:.3f}"))
    assert crossing["band_crosses"] is True
    assert check_band(soft, parse_constraint(f"organ:Dmean<{high + 1:.3f}"))["band_crosses"] is False
    with pytest.raises(ValueError, match="outside 0..1"):
        probability_band(dose, geometry, _ball(points, RADIUS) * 5.0, geometry)


def _labels(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def _write_probabilities(folder, labels: np.ndarray, image: sitk.Image, names: dict) -> None:
    """A model's maps stand-in: each label's mask smoothed over about one voxel, as prob_<name>.nrrd."""
    folder.mkdir()
    for value in np.unique(labels[labels > 0]):
        smooth = ndimage.gaussian_filter((labels == value).astype(np.float32), 0.8)
        out = sitk.GetImageFromArray(np.clip(smooth, 0.0, 1.0).astype(np.float32))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(folder / f"prob_{names[int(value)]}.nrrd"))


def test_totalsegmentator_models_on_a_medai_plan(scene, shared_data, tmp_path):
    """example_seg vs example_seg_fast on a 3-beam MedAI plan of example_ct_sm (liver target, 50 Gy): the
    table agrees with the voxels, liver/spleen/aorta carry Dice and dose differences, within the time budget."""
    from MedAIPlanLib.logic import MedAIPlanLogic

    folder = shared_data / "segmentation" / "totalsegmentator"
    names = KNOWN_LABEL_MAPS["totalsegmentator"]
    ct = bridge.load_volume(scene, folder / "example_ct_sm.nii.gz")
    structures = bridge.load_segmentation(scene, folder / "example_seg.nii.gz", segment_names={5: "liver"})
    dose_node = MedAIPlanLogic(scene).compute_dose(
        ct,
        structures,
        "liver",
        gantry_angles=[0, 120, 240],
        bixel_width_mm=10.0,
        prescription_gy=50.0,
        dose_grid_mm=6.0,
        device="cpu",
    )
    dose_path = bridge.save_node(dose_node, tmp_path / "dose.nrrd")
    ref, image = _labels(folder / "example_seg.nii.gz")
    cand, _ = _labels(folder / "example_seg_fast.nii.gz")
    _write_probabilities(tmp_path / "prob", ref, image, names)
    report_path, table_path = tmp_path / "R.json", tmp_path / "T.csv"
    code = main(
        [
            "contour-qa",
            str(dose_path),
            str(folder / "example_seg.nii.gz"),
            str(folder / "example_seg_fast.nii.gz"),
            "--label-names",
            "totalsegmentator",
            "--plan-target",
            "liver",
            "--prescription",
            "50",
            "--probabilities",
            str(tmp_path / "prob"),
            "--constraint",
            "liver:Dmean<45",
            "--report",
            str(report_path),
            "--table",
            str(table_path),
            "--report-pdf",
            str(tmp_path / "QA.pdf"),
        ]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    rows = report["metrics"]["structures"]
    assert len(rows) == 40
    assert report["metrics"]["unmatched"]["reference"] == ["lung_middle_lobe_right"]
    assert report["metrics"]["mean_dice_reference"] == pytest.approx(0.902, abs=0.001)  # SOURCE.md's figure
    dose = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(dose_path)), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    )
    table = {r["Structure"]: r for r in csv.DictReader(table_path.open())}
    assert list(table) == report["metrics"]["ranking"] == list(rows)
    relevance = [float(table[n]["relevance"]) for n in table]
    assert relevance == sorted(relevance, reverse=True)  # ranked by dose relevance, not by Dice
    by_name = {v: k for k, v in names.items()}
    for name in ("liver", "spleen", "aorta"):
        a, b = ref == by_name[name], cand == by_name[name]
        dice = 2.0 * np.sum(a & b) / (a.sum() + b.sum())
        d_mean = float(dose[b].mean() - dose[a].mean())
        d95 = _d95(dose[b]) - _d95(dose[a])
        for source in (
            rows[name],
            {k: float(v) for k, v in table[name].items() if k not in ("Structure", "Candidate", "reasons")},
        ):
            assert source["dice"] == pytest.approx(dice, rel=1e-6)
            assert source["delta_Dmean_Gy"] == pytest.approx(d_mean, abs=max(0.01 * abs(d_mean), 1e-4))
            assert source["delta_D95_Gy"] == pytest.approx(d95, abs=max(0.02 * abs(d95), 0.05))
        assert rows[name]["reference"]["Dmean_Gy"] == pytest.approx(float(dose[a].mean()), rel=1e-6)
        low, high = rows[name]["Dmean_band_Gy"]
        assert low <= rows[name]["band"]["nominal"]["Dmean"] <= high
        assert high > low
    assert rows["liver"]["is_target"]
    assert "D95 (target)" in rows["liver"]["limits_gy"]
    assert report["metrics"]["dose_relevant"] == [n for n, r in rows.items() if r["dose_relevant"]]
    summary = report["metrics"]["summary"]  # the case's line in a cohort table
    assert summary["dose_relevant"] == len(report["metrics"]["dose_relevant"])
    assert summary["max_abs_delta_Dmean_Gy"] == max(abs(r["delta_Dmean_Gy"]) for r in rows.values())
    timings = report["timings_s"]
    assert timings["compare"] <= 10.0, timings
    assert timings["bands"] <= 30.0, timings
    assert (tmp_path / "QA.pdf").stat().st_size > 50_000


def test_rtstruct_pair_with_a_mapping_file(shared_data, tmp_path):
    """Nelms' 24 mm cylinder and the same cylinder 1 mm to the left (RTSTRUCTs of other names, paired by a CSV
    mapping) on the 1 Gy/mm anterior-posterior gradient: Dice of two circles 1 mm apart, and no dose change,
    since the shift runs across the gradient: a Dice below 1 that does not matter for the dose."""
    base = shared_data / "rt" / "nelms-dvh-benchmark"
    mapping = tmp_path / "names.csv"
    mapping.write_text("reference,candidate\nCylinder_20_0,Cylinder_20_X10\n")
    report = tmp_path / "R.json"
    assert (
        main(
            [
                "contour-qa",
                str(base / "dose_grids" / "Linear_AntPost_1mm_Aligned.dcm"),
                str(base / "structures" / "Cylinder_20_0.dcm"),
                str(base / "structures" / "Cylinder_20_X10.dcm"),
                "--mapping",
                str(mapping),
                "--tolerance-mm",
                "2",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    row = json.loads(report.read_text())["metrics"]["structures"]["Cylinder_20_0"]
    r, d = 12.0, 1.0
    lens = 2 * r * r * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r * r - d * d)
    assert row["dice"] == pytest.approx(lens / (np.pi * r * r), abs=0.003)
    assert row["surface_dice"] == pytest.approx(1.0)  # every surface point within 2 mm of the other
    assert row["reference"]["Dmean_Gy"] == pytest.approx(16.0, abs=0.05)  # the analytical mean
    assert abs(row["delta_Dmean_Gy"]) < 0.01
    assert abs(row["delta_D95_Gy"]) < 0.05
    assert not row["dose_relevant"]


def test_logic_fills_a_table_and_a_paired_dvh_chart_with_the_band(scene, penumbra_case):
    """What the Contour QA panel shows: the ranked table node and a chart of paired DVHs with the model's band."""
    dose, reference, grown, dose_node, ref_node, cand_node = penumbra_case
    probability = bridge.create_volume(scene, _soft_probability(_points(_grid()), 1.5), _grid(), "organ probability")
    logic = ContourQALogic(scene)
    result = logic.compare(dose_node, ref_node, cand_node)
    logic.attach_bands(result, logic.bands(dose_node, {"organ": probability}))
    columns = bridge.columns_from_table(result.table)
    assert columns["Structure"] == ["organ"]
    assert columns["delta_Dmean_Gy"][0] == pytest.approx(result.structures["organ"]["delta_Dmean_Gy"])
    table, chart = logic.dvh_chart(result, dose_node, ref_node, cand_node, {"organ": probability})
    curves = {k: np.asarray(v) for k, v in bridge.columns_from_table(table).items()}
    axis = curves["Dose (Gy)"]
    for name, mask in (("reference", reference), ("candidate", grown)):
        at_30 = float(np.interp(30.0, axis, curves[f"organ {name} (%)"]))
        assert at_30 == pytest.approx(100.0 * np.mean(dose[mask] >= 30.0), abs=1.0)
    assert np.all(curves["organ band low (%)"] <= curves["organ band high (%)"] + 1e-9)
    assert chart.GetNumberOfPlotSeriesNodes() == 4
    styles = {
        chart.GetNthPlotSeriesNode(i).GetYColumnName(): chart.GetNthPlotSeriesNode(i).GetLineStyle() for i in range(4)
    }
    series = chart.GetNthPlotSeriesNode(0)
    assert styles["organ candidate (%)"] == series.LineStyleDash
    assert styles["organ reference (%)"] == series.LineStyleSolid


def test_bands_only_and_nonsense_refused(scene, penumbra_case, tmp_path, capsys):
    """One structure set plus its model's maps: bands and a constraint crossing, with no candidate; bad options
    are refused with what to give."""
    dose, reference, _, dose_node, ref_node, _ = penumbra_case
    dose_path = bridge.save_node(dose_node, tmp_path / "dose.nrrd")
    seg_path = bridge.save_node(ref_node, tmp_path / "reference.seg.nrrd")
    folder = tmp_path / "prob"
    folder.mkdir()
    maps = bridge.create_volume(scene, _soft_probability(_points(_grid()), 1.5), _grid(), "organ probability")
    bridge.save_node(maps, folder / "prob_organ.nrrd")
    report = tmp_path / "R.json"
    mean = float(dose[reference].mean())
    assert (
        main(
            [
                "contour-qa",
                str(dose_path),
                str(seg_path),
                "--probabilities",
                str(folder),
                "--constraint",
                f"organ:Dmean<{mean:.3f}",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    row = json.loads(report.read_text())["metrics"]["structures"]["organ"]
    low, high = row["Dmean_band_Gy"]
    assert low < mean < high
    assert row["band_crosses_constraint"] is True
    assert row["reference"]["Dmean_Gy"] == pytest.approx(mean, rel=1e-6)
    bad = [
        ([], "CANDIDATE"),
        (["--probabilities", str(tmp_path)], "named after a structure"),
        (["--probabilities", str(folder), "--levels", "0,0.5"], "levels"),
        (["--probabilities", str(folder), "--constraint", "organ:mean"], "STRUCTURE:STAT<LIMIT"),
    ]
    for extra, message in bad:
        assert main(["contour-qa", str(dose_path), str(seg_path), *extra]) != 0
        assert message in capsys.readouterr().err
    assert main(["contour-qa", str(dose_path), str(seg_path), str(seg_path), "--tolerance-mm", "-1"]) != 0
    assert "tolerance" in capsys.readouterr().err
