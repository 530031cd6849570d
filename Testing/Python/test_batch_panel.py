"""The panel's Batch section: ``medai batch`` in a worker process over a case folder or a manifest, its
cohort table as a table node, failures as rows, bad input refused before anything runs.

Real phantom cases, a real worker process running ``medai batch`` on Dask, real MRML table nodes.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from batch_cohort import write_cohort, write_pipeline
from pythonslicer import SLICER_REFERENCE, build_pythonslicer

from MedAICommonLib import bridge
from MedAICommonLib.cohort.batch_job import BatchJob, cohort_table_name, job_from_panel
from MedAICommonLib.cohort.case_folder import cases_from_folder
from MedAICommonLib.progress import CancelledError, Progress
from MedAISegLib.learning.phantom_cases import write_phantom_cases
from MedAISegLib.panel_state import batch_widgets

pytest.importorskip("distributed")

# threshold each image, score it against its label: two light steps with real metrics
STEPS = [
    {
        "name": "segment",
        "command": "segment",
        "args": ["{case.image}", "{out}/seg.seg.nrrd", "--method", "threshold", "--lower", "150"],
    },
    {
        "name": "evaluate",
        "command": "evaluate",
        "args": ["{case.label}", "{segment}/seg.seg.nrrd", "--label-names", "1=threshold"],
    },
]
SHAPE = (24, 24, 24)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    """Three cases, one sub-folder each: ``caseN/image.nii.gz`` and ``caseN/label.nii.gz``."""
    root = tmp_path_factory.mktemp("cases")
    images, labels = write_phantom_cases(root / "raw", range(3), shape=SHAPE)
    for index, (image, label) in enumerate(zip(images, labels)):
        (root / "cases" / f"case{index}").mkdir(parents=True)
        shutil.move(image, root / "cases" / f"case{index}" / "image.nii.gz")
        shutil.move(label, root / "cases" / f"case{index}" / "label.nii.gz")
    return root / "cases"


@pytest.fixture
def pythonslicer_env(tmp_path_factory):
    """The extra environment that gives the worker (and its Dask workers) PythonSlicer's ``slicer`` package."""
    if not SLICER_REFERENCE.is_dir():
        message = f"Slicer's reference sources not found at {SLICER_REFERENCE}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return {"PYTHONPATH": str(build_pythonslicer(tmp_path_factory.mktemp("pythonslicer")))}


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_as_csv(table, rows: list[dict]) -> None:
    """The table node holds exactly the CSV: same columns in order, text as text, numbers as numbers."""
    columns = bridge.columns_from_table(table)
    assert list(columns) == list(rows[0])
    for name, values in columns.items():
        for value, row in zip(values, rows, strict=True):
            if isinstance(value, float):
                assert (math.isnan(value) and row[name] == "") or value == pytest.approx(float(row[name])), name
            else:
                assert value == row[name], name


def test_a_case_folder_becomes_a_manifest(case_folder, tmp_path):
    columns, rows = cases_from_folder(case_folder)
    assert columns == ["image", "label"]
    assert [r["id"] for r in rows] == ["case0", "case1", "case2"]
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).name == "image.nii.gz" for r in rows)
    assert [Path(r["label"]).parent.name for r in rows] == ["case0", "case1", "case2"]

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("patient 7.nrrd", "b.nii.gz", "c.seg.nrrd", "notes.txt", ".hidden.nrrd"):
        (flat / name).write_bytes(b"x")
    (flat / "results").mkdir()
    columns, rows = cases_from_folder(flat)
    assert columns == ["image"]
    assert [(r["id"], Path(r["image"]).name) for r in rows] == [
        ("b", "b.nii.gz"),
        ("c", "c.seg.nrrd"),
        ("patient_7", "patient 7.nrrd"),
    ]

    series = tmp_path / "series"
    for case in ("p1", "p2"):
        (series / case).mkdir(parents=True)
        (series / case / "IM0001.dcm").write_bytes(b"x")
    (series / "out").mkdir()
    columns, rows = cases_from_folder(series, exclude=[series / "out"])
    assert columns == ["image"]
    assert [(r["id"], Path(r["image"])) for r in rows] == [("p1", series / "p1"), ("p2", series / "p2")]

    (series / "p2" / "ct.nrrd").write_bytes(b"x")
    with pytest.raises(ValueError, match="p2 has the inputs ct but p1 has image"):
        cases_from_folder(series, exclude=[series / "out"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no case"):
        cases_from_folder(tmp_path / "empty")


def _panel(**values) -> SimpleNamespace:
    """The Batch section's parameters as the parameter node holds them (unset paths are ``Path()``)."""
    fields = dict(
        batchPipeline="segmentation-cohort",
        batchPipelineFile=Path(),
        batchInputKind="folder",
        batchInput=Path(),
        batchOutputFolder=Path(),
        batchWorkers=2,
        batchTable=None,
    )
    return SimpleNamespace(**(fields | values))


def test_bad_input_is_refused_before_anything_runs(scene, case_folder, tmp_path):
    pipeline = write_pipeline(tmp_path / "pipeline.yaml", STEPS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    shutil.copy(case_folder / "case0" / "image.nii.gz", tmp_path / "flat" / "a.nii.gz")
    before = scene.GetNumberOfNodes()
    refused = {
        "Pipeline no-such-pipeline not found": BatchJob(scene, "no-such-pipeline", case_folder, tmp_path / "o1"),
        "holds no case": BatchJob(scene, pipeline, tmp_path / "empty", tmp_path / "o2"),
        "has no column 'label'": BatchJob(scene, pipeline, tmp_path / "flat", tmp_path / "o3"),
        "is the case folder": BatchJob(scene, pipeline, case_folder, case_folder),
        "workers must be 1 or more": BatchJob(scene, pipeline, case_folder, tmp_path / "o4", workers=0),
    }
    for message, job in refused.items():
        with pytest.raises(ValueError, match=message):
            job.start()
        assert job.worker is None, message
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)), "nothing is written before the check"
    assert scene.GetNumberOfNodes() == before

    panel = _panel(batchPipeline="file", batchInput=case_folder, batchOutputFolder=tmp_path / "results", batchWorkers=1)
    assert batch_widgets(panel) == {"batchPipelineFileLineEdit": True, "batchRunButton": False}
    with pytest.raises(ValueError, match="Choose the pipeline file"):
        job_from_panel(scene, panel)
    panel.batchPipelineFile = pipeline
    panel.batchInputKind = "manifest"
    with pytest.raises(ValueError, match="manifest .CSV. must be a file"):
        job_from_panel(scene, panel)
    panel.batchInputKind = "folder"
    assert batch_widgets(panel)["batchRunButton"]
    job = job_from_panel(scene, panel)
    assert (job.pipeline, job.cases, job.output, job.workers) == (str(pipeline), case_folder, tmp_path / "results", 1)
    assert scene.GetNumberOfNodes() == before


@pytest.mark.slow  # a PythonSlicer worker running a Dask cohort (about 25 s)
def test_a_case_folder_batch_gives_the_cohort_table_with_failed_cases_as_rows(
    scene, case_folder, pythonslicer_env, tmp_path
):
    """In PythonSlicer's namespace, as in Slicer: one case cannot be read, medai batch exits 3, and the table
    holds all three cases, the failed one with its status and error."""
    cases = tmp_path / "cases"
    shutil.copytree(case_folder, cases)
    (cases / "case1" / "image.nii.gz").write_bytes(b"<html>404 Not Found</html>")  # a download that went wrong
    earlier = bridge.create_table(scene, {"id": ["old"]}, "results cohort")
    output, stages = tmp_path / "results", []
    job = BatchJob(
        scene,
        write_pipeline(tmp_path / "pipeline.yaml", STEPS),
        cases,
        output,
        workers=1,
        table_node=earlier,
        env=pythonslicer_env,
    )

    nodes = job.run(Progress(lambda stage, fraction: stages.append((stage, fraction))), timeout=600)

    assert job.worker.result().returncode == 3
    assert nodes["table"] is earlier, "a re-run into the same folder replaces its table"
    assert earlier.GetName() == cohort_table_name(output) == "results cohort"
    rows = _csv(output / "cohort.csv")
    assert earlier.GetNumberOfRows() == len(rows) == 3
    _same_as_csv(earlier, rows)
    columns = bridge.columns_from_table(earlier)
    assert columns["id"] == ["case0", "case1", "case2"]
    assert columns["status"] == ["done", "failed", "done"]
    assert columns["error"][1].startswith("segment:")
    assert "image.nii.gz" in columns["error"][1]
    assert math.isnan(columns["evaluate.mean_dice"][1])
    assert all(0.5 < columns["evaluate.mean_dice"][i] <= 1.0 for i in (0, 2))
    assert [r["id"] for r in _csv(output / "cases.csv")] == ["case0", "case1", "case2"]
    assert stages[-1] == ("2 done, 1 failed of 3 cases", 1.0)
    assert job.status == "3 cases: 2 done, 1 failed (case1)"


@pytest.mark.slow
def test_a_manifest_batch_makes_a_new_table_node(scene, tmp_path):
    manifest = write_cohort(tmp_path / "cohort", 3, shape=SHAPE)
    other = bridge.create_table(scene, {"id": ["x"]}, "another cohort")
    before = scene.GetNumberOfNodes()
    output = tmp_path / "run 2"
    job = BatchJob(scene, write_pipeline(tmp_path / "pipeline.yaml", STEPS), manifest, output, table_node=other)

    table = job.run(timeout=600)["table"]

    assert job.worker.result().returncode == 0
    assert scene.GetNumberOfNodes() == before + 1
    assert table.GetName() == "run 2 cohort"
    assert bridge.columns_from_table(other) == {"id": ["x"]}, "another folder's table is left alone"
    _same_as_csv(table, _csv(output / "cohort.csv"))
    assert bridge.columns_from_table(table)["status"] == ["done"] * 3
    assert not (output / "cases.csv").exists(), "a manifest is run as it is"


def test_cancel_stops_the_batch_and_leaves_the_scene(scene, case_folder, tmp_path):
    before = scene.GetNumberOfNodes()
    job = BatchJob(scene, write_pipeline(tmp_path / "pipeline.yaml", STEPS), case_folder, tmp_path / "results")
    heard = []
    job.on_status = lambda text, running: heard.append((text, running))
    job.start()
    job.cancel()
    with pytest.raises(CancelledError):
        job.finish()
    assert heard[0] == ("starting the workers", True)
    assert heard[-1] == ("cancelled; the scene is unchanged", False)
    assert scene.GetNumberOfNodes() == before


def test_the_section_binds_every_batch_parameter_and_offers_every_shipped_pipeline():
    """Slicer binds a .ui widget by its SlicerParameterName; a name missing on either side only fails when the
    panel opens, so the Batch section is read here against the parameter node and the code that drives it."""
    from test_slicer_contract import parameter_annotations, split_annotated

    from MedAICommonLib.cohort.pipeline import shipped_pipelines

    annotations = parameter_annotations(REPO / "MedAISeg" / "MedAISeg.py")
    root = ET.parse(REPO / "MedAISeg" / "Resources" / "UI" / "MedAISeg.ui").getroot()
    box = next(w for w in root.iter("widget") if w.get("name") == "batchCollapsibleButton")
    widgets = {w.get("name"): w for w in box.iter("widget")}
    bound = {
        p.find("string").text: w.get("class")
        for w in widgets.values()
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    assert set(bound) == {name for name in annotations if name.startswith("batch")}
    assert bound["batchPipeline"] == bound["batchInputKind"] == "QComboBox"
    assert bound["batchWorkers"] == "QSpinBox"
    source = (REPO / "MedAICommon" / "MedAICommonLib" / "application" / "batch_section.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source)) - {"statusLabel"}
    assert used | set(batch_widgets(_panel())) <= set(widgets)
    follows = [
        (c.findtext("sender"), c.findtext("receiver"), c.findtext("slot"))
        for c in root.iter("connection")
        if c.findtext("signal") == "currentNodeChanged(vtkMRMLNode*)"
    ]
    assert ("batchTableSelector", "batchTableView", "setMRMLTableNode(vtkMRMLNode*)") in follows

    (choice,) = split_annotated(annotations["batchPipeline"])[1]
    assert choice.args[0][-1] == "file"
    assert sorted(choice.args[0][:-1]) == sorted(shipped_pipelines()), "a shipped pipeline is missing in the panel"
    combo = widgets["batchPipelineComboBox"]
    assert [i.find("property/string").text for i in combo.findall("item")] == choice.args[0]
