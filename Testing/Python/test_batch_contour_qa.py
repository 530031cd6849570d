"""``medai batch --pipeline contour-qa-cohort``: a plan per case, contour QA of a candidate set on its dose, and
the cohort summary of how often and by how much the contour differences change the dose (issues 16 and 17).

Three generated cases (a bright target and a dark organ in noisy tissue); each candidate is its reference with one
structure grown or shrunk by a known margin. Real plans, real ``medai contour-qa`` runs in a real Dask worker;
every summary figure is checked against the per-case reports and the voxels. The shipped pipelines are checked
inside a wheel built from this tree.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.cohort.pipeline import find_pipeline, load_pipeline
from MedAICommonLib.cohort.report import key_metric_columns
from MedAICommonLib.runtime import create_runtime
from MedAISegLib.learning.phantom_cases import make_two_lesion_case

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
STEP = "contour-qa"
# case: (structure changed, voxels: > 0 grown, < 0 shrunk by that many 6-connected layers of 2 mm voxels)
CHANGES = {"case000": ("target", 1), "case001": ("organ", 2), "case002": ("target", -1)}
SHIPPED = ("segmentation-cohort", "planning-cohort", "contour-qa-cohort")


def _changed(mask: np.ndarray, layers: int) -> np.ndarray:
    ball = ndimage.generate_binary_structure(3, 1)
    if layers > 0:
        return ndimage.binary_dilation(mask, ball, iterations=layers)
    return ndimage.binary_erosion(mask, ball, iterations=-layers)


def write_contour_qa_cohort(folder: Path) -> tuple[Path, dict]:
    """CT, reference and candidate .seg.nrrd per case and the manifest; returns it and ``{case: (ref, cand)}``
    masks (KJI) for the checks."""
    data = folder / "data"
    data.mkdir(parents=True)
    runtime = create_runtime()
    lines, masks = ["id,ct,reference,candidate,target,prescription"], {}
    try:
        for seed, (case, (structure, layers)) in enumerate(CHANGES.items()):
            image, label = make_two_lesion_case(seed)
            sitk.WriteImage(image, str(data / f"{case}_ct.nrrd"))
            geometry = bridge.volume_geometry(bridge.load_volume(runtime.scene, data / f"{case}_ct.nrrd"))
            labels = sitk.GetArrayFromImage(label)
            reference = {"target": labels == 1, "organ": labels == 2}
            candidate = {**reference, structure: _changed(reference[structure], layers)}
            for name, set_ in (("reference", reference), ("candidate", candidate)):
                node = bridge.create_segmentation_from_masks(runtime.scene, set_, geometry, f"{case} {name}")
                bridge.save_node(node, data / f"{case}_{name}.seg.nrrd")
            masks[case] = (reference, candidate)
            lines.append(
                f"{case},data/{case}_ct.nrrd,data/{case}_reference.seg.nrrd,data/{case}_candidate.seg.nrrd,target,60"
            )
    finally:
        runtime.clear()
    manifest = folder / "cohort.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, masks


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, shared_data):
    """The shipped contour-qa-cohort pipeline, by name, over the three cases on one embedded Dask worker."""
    folder = tmp_path_factory.mktemp("cqa_cohort")
    manifest, masks = write_contour_qa_cohort(folder)
    output, report = folder / "results", folder / "batch.json"
    with pytest.MonkeyPatch.context() as patch:  # the workers' plans read matRad's base data from here
        patch.setenv("MEDAI_PHOTON_MACHINE", str(shared_data / "rt" / "matRad" / "photons_Generic.mat"))
        code = main(
            [
                "batch",
                str(manifest),
                "--pipeline",
                "contour-qa-cohort",
                "--output",
                str(output),
                "--workers",
                "1",
                "--report",
                str(report),
            ]
        )
    reports = {
        case: json.loads((output / case / STEP / "report.json").read_text())
        for case in CHANGES
        if (output / case / STEP / "report.json").exists()
    }
    return code, json.loads(report.read_text()), output, masks, reports


def _csv(path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # a cohort run through Dask (about 50 s)
def test_each_case_row_carries_the_contour_qa_metrics(batch_run):
    code, report, output, masks, reports = batch_run
    assert code == 0, report["metrics"].get("failed")
    assert report["metrics"]["cases_done"] == len(CHANGES)
    rows = {row["id"]: row for row in _csv(output / "cohort.csv")}
    assert list(rows) == list(CHANGES)
    for case, (structure, _) in CHANGES.items():
        row, structures = rows[case], reports[case]["metrics"]["structures"]
        assert float(row[f"{STEP}.summary.dose_relevant"]) == reports[case]["metrics"]["summary"]["dose_relevant"]
        reference, candidate = masks[case]
        a, b = reference[structure], candidate[structure]
        dice = 2.0 * np.sum(a & b) / (a.sum() + b.sum())
        assert float(row[f"{STEP}.structures.{structure}.dice"]) == pytest.approx(dice, rel=1e-9)
        assert 0.0 < dice < 1.0
        unchanged = "organ" if structure == "target" else "target"
        assert float(row[f"{STEP}.structures.{unchanged}.dice"]) == 1.0
        assert float(row[f"{STEP}.structures.{unchanged}.delta_Dmean_Gy"]) == 0.0
        assert row[f"{STEP}.structures.{unchanged}.dose_relevant"] == "0"
        for name, values in structures.items():
            assert float(row[f"{STEP}.structures.{name}.delta_D95_Gy"]) == pytest.approx(values["delta_D95_Gy"])
        assert float(row["plan.target_D95_percent_of_prescription"]) > 50.0, "the plan covers the target"
    assert not [c for c in rows["case000"] if ".reference." in c or ".limits_gy." in c], (
        "the table keeps each structure's key columns, not every statistic of both sets"
    )
    # growing the target by 2 mm takes in penumbra: its D95 falls by more than the 2 % (1.2 Gy) limit
    grown = reports["case000"]["metrics"]["structures"]["target"]
    assert grown["delta_D95_Gy"] < -1.2
    assert grown["dose_relevant"]


@pytest.mark.slow  # a cohort run through Dask (about 50 s)
def test_cohort_summary_counts_what_the_case_reports_say(batch_run):
    code, report, output, _, reports = batch_run
    assert code == 0
    summary = {row["structure"]: row for row in _csv(output / "contour_qa_summary.csv")}
    assert report["outputs"]["contour_qa_summary"] == str(output / "contour_qa_summary.csv")
    assert set(summary) == {"target", "organ"}
    metrics = report["metrics"]["contour_qa"]
    assert metrics["step"] == STEP
    assert metrics["cases"] == len(CHANGES)
    for name, row in summary.items():
        per_case = [r["metrics"]["structures"][name] for r in reports.values()]
        flagged = sum(bool(r["dose_relevant"]) for r in per_case)
        d_mean = [abs(r["delta_Dmean_Gy"]) for r in per_case]
        d95 = [abs(r["delta_D95_Gy"]) for r in per_case]
        assert int(row["cases"]) == len(per_case) == len(CHANGES)
        assert int(row["flagged"]) == flagged == metrics["structures_flagged"][name]
        assert float(row["flagged_fraction"]) == pytest.approx(flagged / len(per_case))
        assert float(row["median_abs_delta_Dmean_Gy"]) == pytest.approx(np.median(d_mean))
        assert float(row["max_abs_delta_Dmean_Gy"]) == pytest.approx(max(d_mean))
        assert float(row["median_abs_delta_D95_Gy"]) == pytest.approx(np.median(d95))
        assert float(row["max_abs_delta_D95_Gy"]) == pytest.approx(max(d95))
        assert float(row["median_dice"]) == pytest.approx(np.median([r["dice"] for r in per_case]))
        assert metrics["structures"][name]["max_abs_delta_D95_Gy"] == pytest.approx(max(d95))
    assert metrics["cases_flagged"] == sum(r["metrics"]["summary"]["dose_relevant"] > 0 for r in reports.values())
    assert summary["target"]["flagged"] != "0", "the grown target is flagged"
    order = [row["structure"] for row in _csv(output / "contour_qa_summary.csv")]
    fractions = [float(summary[name]["flagged_fraction"]) for name in order]
    assert fractions == sorted(fractions, reverse=True), "most often flagged first"


@pytest.mark.slow  # a cohort run through Dask (about 50 s)
def test_cohort_report_leads_with_the_contour_qa_summary(batch_run):
    code, _, output, _, _ = batch_run
    assert code == 0
    rows = [
        {k: float(v) if k.startswith(("contour-qa.", "plan.")) and v else v for k, v in row.items()}
        for row in _csv(output / "cohort.csv")
    ]
    columns = key_metric_columns(rows)
    assert columns[:3] == [
        f"{STEP}.summary.dose_relevant",
        f"{STEP}.summary.max_abs_delta_Dmean_Gy",
        f"{STEP}.summary.max_abs_delta_D95_Gy",
    ]
    assert not [c for c in columns if c.startswith(f"{STEP}.structures.")]
    assert (output / "cohort_report.png").stat().st_size > 30_000
    assert (output / "cohort_report.pdf").read_bytes()[:5] == b"%PDF-"


def test_shipped_pipelines_are_found_by_name_and_check_against_their_manifest_columns():
    columns = {
        "segmentation-cohort": ["image", "model", "reference"],
        "planning-cohort": ["ct", "structures", "target", "prescription"],
        "contour-qa-cohort": ["ct", "reference", "candidate", "target", "prescription"],
    }
    for name in SHIPPED:
        path = find_pipeline(name)
        assert path.parent == REPO / "MedAICommon" / "MedAICommonLib" / "cohort" / "pipelines"
        pipeline = load_pipeline(name, columns[name], check_args=False)
        assert sorted({c for step in pipeline.steps for c in step.columns}) == sorted(columns[name])


def test_a_wheel_ships_the_pipelines_and_finds_them_by_name(tmp_path):
    """A non-editable install: the wheel built from this tree holds the YAML files, and, unpacked as pip would
    into site-packages, ``find_pipeline`` finds each by name there."""
    source = tmp_path / "source"
    for module in ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan"):
        shutil.copytree(
            REPO / module / f"{module}Lib",
            source / module / f"{module}Lib",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("medai-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert {f"MedAICommonLib/cohort/pipelines/{name}.yaml" for name in SHIPPED} <= set(names)
    probe = (
        "import sys; from MedAICommonLib.cohort.pipeline import find_pipeline; "
        "print('\\n'.join(str(find_pipeline(n)) for n in sys.argv[1:]))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, *SHIPPED],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    ).stdout.split()
    assert found == [
        str((tmp_path / "site").resolve() / "MedAICommonLib" / "cohort" / "pipelines" / f"{n}.yaml") for n in SHIPPED
    ]
