"""The MedAIPlan panel's Contour QA section (issue 17): what its Compute button runs, on real MRML nodes.

Two structures on an analytic penumbra: "organ", grown by 2 mm in the candidate where the dose falls steeply
(dose-relevant), and "cord", the same in both sets on the flat high-dose plateau (not). The panel's table must
equal the table ``medai contour-qa --table`` writes for the same inputs, its flagged rows must be the ones whose
dose difference (computed here on the voxels) exceeds the limit, and its chart must hold the paired DVHs (and
the band from probability maps).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.contour_qa.logic import ContourQALogic
from MedAIPlanLib.contour_qa.panel_logic import (
    PROBABILITY_MODE,
    ContourQASettings,
    load_probability_folder,
    probability_key,
    probability_nodes_by_name,
    run_contour_qa,
    run_from_parameters,
    show_in_layout,
    structure_names,
    table_model_rows,
)

SPACING = (1.0, 1.0, 2.0)  # i, j, k (mm)
SHAPE = (20, 56, 64)  # k, j, i
ORGAN, CORD = np.array([-6.0, 0.0, 0.0]), np.array([-24.0, 14.0, 0.0])  # RAS mm
PRESCRIPTION = 50.0


def _grid() -> Geometry:
    origin = tuple(-(np.array(SHAPE[::-1]) - 1) / 2 * np.array(SPACING))
    return Geometry(spacing=SPACING, origin=origin, space="RAS", shape_kji=SHAPE)


def _points() -> np.ndarray:
    k, j, i = np.indices(SHAPE)
    return _grid().index_to_point(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*SHAPE, 3)


def _ball(points, centre, radius) -> np.ndarray:
    return np.linalg.norm(points - centre, axis=-1) <= radius


def _probability(points, centre, radius, width_mm) -> np.ndarray:
    return (1.0 / (1.0 + np.exp((np.linalg.norm(points - centre, axis=-1) - radius) / width_mm))).astype(np.float32)


@pytest.fixture
def case(scene, tmp_path):
    """Dose (an oblique 60 Gy field edge), reference and candidate sets as nodes and as files."""
    points = _points()
    dose = 60.0 / (1.0 + np.exp(points @ (np.array([1.0, 0.37, 0.21]) / np.linalg.norm([1, 0.37, 0.21])) / 3.0))
    masks = {
        "reference": {"organ": _ball(points, ORGAN, 10.0), "cord": _ball(points, CORD, 5.0)},
        "candidate": {"Organ": _ball(points, ORGAN, 12.0), "cord": _ball(points, CORD, 5.0)},
    }
    nodes = {"dose": bridge.create_volume(scene, dose.astype(np.float32), _grid(), "qa dose")}
    nodes |= {side: bridge.create_segmentation_from_masks(scene, m, _grid(), side) for side, m in masks.items()}
    files = {"dose": bridge.save_node(nodes["dose"], tmp_path / "dose.nrrd")}
    files |= {side: bridge.save_node(nodes[side], tmp_path / f"{side}.seg.nrrd") for side in masks}
    return dose.astype(np.float32), masks, nodes, files, points


def _cli_table(files, tmp_path, *extra) -> list[dict]:
    table = tmp_path / "T.csv"
    assert main(["contour-qa", str(files["dose"]), str(files["reference"]), *extra, "--table", str(table)]) == 0
    return list(csv.DictReader(table.open()))


def _assert_same_table(node, cli_rows: list[dict]) -> None:
    """The panel's table node holds the CLI's columns, rows and numbers (NaN where the CLI wrote NaN)."""
    columns = bridge.columns_from_table(node)
    assert list(columns) == list(cli_rows[0])
    assert columns["Structure"] == [r["Structure"] for r in cli_rows]
    for name, values in columns.items():
        for value, row in zip(values, cli_rows):
            if isinstance(value, str):
                assert value == row[name], name
            else:
                np.testing.assert_allclose(value, float(row[name]), rtol=1e-5, atol=1e-9, err_msg=name)


SETTINGS = dict(
    plan_target="organ",
    prescription_gy=PRESCRIPTION,
    dmean_gy=1.0,
    dmean_percent=3.0,
    target_d95_percent=2.0,
    tolerance_mm=1.5,
)
CLI_OPTIONS = [
    "--plan-target",
    "organ",
    "--prescription",
    "50",
    "--dmean-gy",
    "1",
    "--dmean-percent",
    "3",
    "--target-d95-percent",
    "2",
    "--tolerance-mm",
    "1.5",
]


def test_candidate_mode_table_equals_the_cli_and_flags_the_dose_relevant_row(scene, case, tmp_path):
    dose, masks, nodes, files, _ = case
    out = run_contour_qa(
        scene, nodes["dose"], nodes["reference"], ContourQASettings(**SETTINGS), candidate_node=nodes["candidate"]
    )
    _assert_same_table(out.table, _cli_table(files, tmp_path, str(files["candidate"]), *CLI_OPTIONS))
    # flagged: |dDmean| over min(1 Gy, 3 % of 50 Gy), computed on the voxels here
    limit = min(1.0, 0.03 * PRESCRIPTION)
    delta = {
        n: abs(float(dose[masks["candidate"][c]].mean() - dose[masks["reference"][n]].mean()))
        for n, c in (("organ", "Organ"), ("cord", "cord"))
    }
    assert delta["organ"] > limit > delta["cord"]
    names = bridge.columns_from_table(out.table)["Structure"]
    assert names == ["organ", "cord"]  # ranked by dose relevance
    assert out.flagged == [names.index("organ")] == ContourQALogic.flagged_rows(out.table)
    assert table_model_rows(out.table, out.flagged) == [1]  # the model's row 0 holds the column names
    out.table.SetUseColumnTitleAsColumnHeader(True)
    assert table_model_rows(out.table, out.flagged) == [0]
    # the chart: reference and candidate DVH of both structures, each at its own voxels' V30
    series = [out.chart.GetNthPlotSeriesNode(i) for i in range(out.chart.GetNumberOfPlotSeriesNodes())]
    assert sorted(s.GetYColumnName() for s in series) == sorted(
        f"{n} {k} (%)" for n in ("organ", "cord") for k in ("reference", "candidate")
    )
    curves = bridge.columns_from_table(out.dvh_table)
    for name, side, key in (("organ", "reference", "organ"), ("organ", "candidate", "Organ")):
        at_30 = np.interp(30.0, curves["Dose (Gy)"], curves[f"{name} {side} (%)"])
        assert at_30 == pytest.approx(100.0 * np.mean(dose[masks[side][key]] >= 30.0), abs=1.0)


def test_a_rerun_replaces_the_outputs_instead_of_adding_nodes(scene, case):
    _, _, nodes, _, _ = case
    first = run_contour_qa(
        scene, nodes["dose"], nodes["reference"], ContourQASettings(**SETTINGS), candidate_node=nodes["candidate"]
    )
    counts = {
        c: scene.GetNumberOfNodesByClass(c)
        for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode")
    }
    assert counts == {"vtkMRMLTableNode": 2, "vtkMRMLPlotChartNode": 1, "vtkMRMLPlotSeriesNode": 4}
    looser = ContourQASettings(**(SETTINGS | {"dmean_gy": 50.0, "dmean_percent": 100.0, "plan_target": ""}))
    second = run_contour_qa(
        scene,
        nodes["dose"],
        nodes["reference"],
        looser,
        candidate_node=nodes["candidate"],
        table_node=first.table,
        chart_node=first.chart,
    )
    assert (second.table, second.chart, second.dvh_table) == (first.table, first.chart, first.dvh_table)
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    assert second.flagged == []  # 50 Gy limits flag nothing; the table node now says so too
    assert ContourQALogic.flagged_rows(first.table) == []


def test_probability_mode_gives_bands_flags_the_crossing_and_equals_the_cli(scene, case, tmp_path):
    dose, masks, nodes, files, points = case
    probability = _probability(points, ORGAN, 10.0, 1.5)
    maps = {"organ": bridge.create_volume(scene, probability, _grid(), "prob_organ")}
    folder = tmp_path / "prob"
    folder.mkdir()
    bridge.save_node(maps["organ"], folder / "prob_organ.nrrd")
    crossed = float(dose[masks["reference"]["organ"]].mean())  # the reference Dmean lies inside the band
    settings = ContourQASettings(mode=PROBABILITY_MODE, constraints=f"organ:Dmean<{crossed:.3f}; cord:Dmean<70")
    out = run_contour_qa(
        scene, nodes["dose"], nodes["reference"], settings, candidate_node=nodes["candidate"], probability_nodes=maps
    )
    _assert_same_table(
        out.table,
        _cli_table(
            files,
            tmp_path,
            "--probabilities",
            str(folder),
            "--constraint",
            f"organ:Dmean<{crossed:.3f}",
            "--constraint",
            "cord:Dmean<70",
        ),
    )
    columns = bridge.columns_from_table(out.table)
    low, high = columns["Dmean_band_Gy_low"][0], columns["Dmean_band_Gy_high"][0]
    assert columns["Structure"][0] == "organ"
    assert low < crossed < high
    assert out.flagged == [0]
    names = sorted(
        out.chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(out.chart.GetNumberOfPlotSeriesNodes())
    )
    assert names == ["cord reference (%)", "organ band high (%)", "organ band low (%)", "organ reference (%)"]
    curves = {k: np.asarray(v) for k, v in bridge.columns_from_table(out.dvh_table).items()}
    assert np.all(curves["organ band low (%)"] <= curves["organ band high (%)"] + 1e-9)
    assert np.any(curves["organ band low (%)"] < curves["organ band high (%)"] - 1.0)


def test_probability_sources_are_matched_by_structure_name(scene, case, tmp_path):
    _, _, nodes, _, points = case
    names = structure_names(nodes["reference"])
    assert sorted(names) == ["cord", "organ"]
    assert [probability_key(n) for n in ("prob_Organ", "organ probability", "probability-organ", "organ")] == [
        "organ"
    ] * 4
    volumes = [
        bridge.create_volume(scene, _probability(points, c, r, 1.0), _grid(), name)
        for c, r, name in ((ORGAN, 10.0, "Organ probability"), (CORD, 5.0, "prob_cord"), (CORD, 5.0, "ct"))
    ]
    assert probability_nodes_by_name(names, volumes) == {"organ": volumes[0], "cord": volumes[1]}
    with pytest.raises(ValueError, match="named after a reference structure"):
        probability_nodes_by_name(names, volumes[2:])
    folder = tmp_path / "maps"
    folder.mkdir()
    bridge.save_node(volumes[1], folder / "prob_cord.nrrd")
    loaded = load_probability_folder(scene, folder, names)
    assert list(loaded) == ["cord"]
    np.testing.assert_array_equal(bridge.array_from_volume(loaded["cord"])[0], bridge.array_from_volume(volumes[1])[0])
    with pytest.raises(ValueError, match="candidate segmentation"):
        run_contour_qa(scene, nodes["dose"], nodes["reference"], ContourQASettings())
    with pytest.raises(ValueError, match="probability maps"):
        run_contour_qa(scene, nodes["dose"], nodes["reference"], ContourQASettings(mode=PROBABILITY_MODE))
    with pytest.raises(ValueError, match="STRUCTURE:STAT<LIMIT"):
        ContourQASettings(constraints="organ mean below 30").constraint_list()


def test_table_and_chart_are_shown_in_the_plot_table_layout(runtime, case):
    """The layout node switches to Four-Up Plot Table and every propagating view shows the outputs."""
    scene = runtime.scene
    _, _, nodes, _, _ = case
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    table_view = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    plot_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    out = run_contour_qa(
        scene, nodes["dose"], nodes["reference"], ContourQASettings(**SETTINGS), candidate_node=nodes["candidate"]
    )
    show_in_layout(scene, runtime.app_logic, out.table, out.chart)
    assert layout.GetViewArrangement() == layout.SlicerLayoutFourUpPlotTableView
    assert table_view.GetTableNodeID() == out.table.GetID()
    assert plot_view.GetPlotChartNodeID() == out.chart.GetID()


def test_what_the_compute_button_runs_reads_the_parameter_node(scene, case, tmp_path):
    """``run_from_parameters`` on the parameter node's fields (here a namespace holding real nodes): the folder of
    maps is read for the run and removed after it; volumes of the scene are matched by name otherwise."""
    dose, masks, nodes, _, points = case
    p = SimpleNamespace(
        qaDose=nodes["dose"], qaReference=nodes["reference"], qaCandidate=nodes["candidate"], qaMode="candidate segmentation",
        qaProbabilityFolder=Path(), qaTargetSegment="organ", qaPrescriptionGy=PRESCRIPTION, qaDmeanGy=1.0,
        qaDmeanPercent=3.0, qaTargetD95Percent=2.0, qaToleranceMm=1.5, qaConstraints="", qaTable=None, qaChart=None,
    )  # fmt: skip
    compared = run_from_parameters(scene, p)
    direct = run_contour_qa(scene, nodes["dose"], nodes["reference"], ContourQASettings(**SETTINGS),
                            candidate_node=nodes["candidate"])  # fmt: skip
    np.testing.assert_equal(bridge.columns_from_table(compared.table), bridge.columns_from_table(direct.table))
    p.qaMode, p.qaTable, p.qaChart = PROBABILITY_MODE, compared.table, compared.chart
    folder = tmp_path / "maps"
    folder.mkdir()
    maps = bridge.create_volume(scene, _probability(points, ORGAN, 10.0, 1.5), _grid(), "prob_organ")
    bridge.save_node(maps, folder / "prob_organ.nrrd")
    volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    p.qaProbabilityFolder = folder
    from_folder = run_from_parameters(scene, p)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes  # the maps read were removed
    assert from_folder.table is compared.table  # the output nodes were updated, not added
    p.qaProbabilityFolder = Path()
    from_scene = run_from_parameters(scene, p, [nodes["dose"], maps])
    for out in (from_folder, from_scene):
        columns = bridge.columns_from_table(out.table)
        assert columns["Structure"] == ["organ", "cord"]
        low, high = columns["Dmean_band_Gy_low"][0], columns["Dmean_band_Gy_high"][0]
        assert low < float(dose[masks["reference"]["organ"]].mean()) < high
    np.testing.assert_equal(bridge.columns_from_table(from_folder.table), bridge.columns_from_table(from_scene.table))
    with pytest.raises(ValueError, match="probability maps"):
        run_from_parameters(scene, p, [])
