"""``medai batch``: a pipeline over a generated cohort on Dask, exactly once, resumable, failures recorded.

Real phantom cases, real ``medai`` commands in real Dask worker processes; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import shutil
import threading
from collections import Counter

import pytest
from batch_cohort import SEGMENTATION_STEPS, done_log, kill_a_busy_worker, write_cohort, write_pipeline

from MedAICommonLib.cli.main import main

distributed = pytest.importorskip("distributed")

CASES = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six phantom cases and their manifest."""
    return write_cohort(tmp_path_factory.mktemp("cohort"), CASES)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, reached with --scheduler (its workers stay warm across runs)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as local,
        distributed.Client(local) as client,
    ):
        yield local, client


def _batch(manifest, pipeline, output, report, *where) -> tuple[int, dict]:
    code = main(
        ["batch", str(manifest), "--pipeline", str(pipeline), "--output", str(output), "--report", str(report), *where]
    )
    return code, json.loads(report.read_text())


def _table(output) -> list[dict]:
    with (output / "cohort.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_bad_manifest_or_pipeline_is_refused_before_anything_runs(cohort, tmp_path, capsys):
    good = write_pipeline(tmp_path / "good.yaml", SEGMENTATION_STEPS)
    later = [SEGMENTATION_STEPS[1], SEGMENTATION_STEPS[0]]
    cases = {
        "unknown command": [{**SEGMENTATION_STEPS[0], "command": "denoize"}],
        "no column 'ct'": [{**SEGMENTATION_STEPS[0], "args": ["{case.ct}", "{out}/a.nrrd", "--method", "n4"]}],
        "does not run before it": later,
        "unrecognized arguments: --strength": [
            {**SEGMENTATION_STEPS[0], "args": [*SEGMENTATION_STEPS[0]["args"], "--strength", "2"]}
        ],
    }
    for expected, steps in cases.items():
        output = tmp_path / expected.replace(" ", "_").replace("'", "")
        code = main(
            [
                "batch",
                str(cohort),
                "--pipeline",
                str(write_pipeline(tmp_path / "p.yaml", steps)),
                "--output",
                str(output),
            ]
        )
        assert code == 1, expected
        assert expected in capsys.readouterr().err
        assert not output.exists(), "nothing may be written before the input is checked"
    twice = tmp_path / "twice.csv"
    rows = cohort.read_text().splitlines()
    twice.write_text("\n".join([*rows, rows[1]]) + "\n")
    assert main(["batch", str(twice), "--pipeline", str(good), "--output", str(tmp_path / "o")]) == 1
    assert "used twice" in capsys.readouterr().err


@pytest.mark.slow  # three cohort runs (about 40 s); test_batch_scale covers it at scale
def test_cohort_runs_once_resumes_and_redoes_only_what_changed(cohort, cluster, tmp_path):
    _, client = cluster
    output, pipeline = tmp_path / "results", write_pipeline(tmp_path / "pipeline.yaml", SEGMENTATION_STEPS)
    code, report = _batch(cohort, pipeline, output, tmp_path / "run1.json", "--workers", "2")
    assert code == 0, report["error"]
    assert report["metrics"]["cases_done"] == CASES
    assert report["metrics"]["steps_run"] == 3 * CASES
    rows = _table(output)
    assert [r["id"] for r in rows] == [f"case{i:03d}" for i in range(CASES)]
    for row in rows:  # the threshold finds each phantom's lesion: a real Dice from a real evaluate step
        assert row["status"] == "done"
        assert 0.5 < float(row["evaluate.mean_dice"]) <= 1.0
        assert float(row["denoise.output_std"]) < float(row["denoise.input_std"])
    assert (output / "cohort_report.png").stat().st_size > 10_000
    assert (output / "cohort_report.pdf").exists()
    first = {(e["case"], e["step"]): e["key"] for e in done_log(output)}
    assert len(first) == len(done_log(output)) == 3 * CASES

    address = client.scheduler.address
    code, report = _batch(cohort, pipeline, output, tmp_path / "run2.json", "--scheduler", address)
    assert code == 0
    assert report["metrics"]["steps_run"] == 0
    assert report["metrics"]["steps_skipped"] == 3 * CASES
    assert len(done_log(output)) == 3 * CASES, "a finished case-step was written again"

    changed = [dict(s) for s in SEGMENTATION_STEPS]
    changed[1]["args"] = [a if a != "150" else "160" for a in changed[1]["args"]]
    code, report = _batch(
        cohort,
        write_pipeline(tmp_path / "changed.yaml", changed),
        output,
        tmp_path / "run3.json",
        "--scheduler",
        address,
    )
    assert code == 0
    assert report["metrics"]["steps_run"] == 2 * CASES
    assert report["metrics"]["steps_skipped"] == CASES
    redone = Counter(e["step"] for e in done_log(output)[3 * CASES :])
    assert redone == {"segment": CASES, "evaluate": CASES}, "only the changed step and those after it are redone"
    assert all(float(r["segment.lower"]) == 160.0 for r in _table(output))


@pytest.mark.slow  # a cohort run through Dask (about 19 s)
def test_a_failing_case_is_recorded_and_the_cohort_goes_on(cohort, cluster, tmp_path):
    _, client = cluster
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.parent, folder)
    broken = folder / "data" / "case2.nii.gz"
    broken.write_bytes(b"<html>404 Not Found</html>")  # a download that went wrong
    output = tmp_path / "results"
    code, report = _batch(
        folder / "cohort.csv",
        write_pipeline(tmp_path / "p.yaml", SEGMENTATION_STEPS),
        output,
        tmp_path / "batch.json",
        "--scheduler",
        client.scheduler.address,
    )
    assert code == 3
    assert report["metrics"]["cases_failed"] == 1
    assert report["metrics"]["cases_done"] == CASES - 1
    assert list(report["metrics"]["failed"]) == ["case002"]
    row = {r["id"]: r for r in _table(output)}["case002"]
    assert row["status"] == "failed"
    assert row["error"].startswith("denoise:")
    assert "case2.nii.gz" in row["error"]
    assert not (output / "case002" / "denoise").exists(), "a failed step is never published as its output"
    assert (output / "case002" / ".denoise.failed" / "log.txt").exists()
    assert {e["case"] for e in done_log(output)} == {f"case{i:03d}" for i in range(CASES)} - {"case002"}


def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(cohort, cluster, tmp_path):
    local, client = cluster  # last in the module: the nanny restarts the killed worker
    output, pipeline = tmp_path / "results", write_pipeline(tmp_path / "p.yaml", SEGMENTATION_STEPS)
    outcome = {}
    run = threading.Thread(
        target=lambda: outcome.update(
            code=_batch(cohort, pipeline, output, tmp_path / "batch.json", "--scheduler", local.scheduler_address)[0]
        )
    )
    run.start()
    killed = kill_a_busy_worker(client, output, after=2)
    run.join(timeout=300)
    assert killed
    assert outcome.get("code") == 0
    entries = done_log(output)
    written = Counter((e["case"], e["step"]) for e in entries)
    assert len(written) == 3 * CASES, "every case-step is done"
    assert max(written.values()) == 1, "no case-step is written twice"
    for case in range(CASES):
        for step in ("denoise", "segment", "evaluate"):
            assert (output / f"case{case:03d}" / step / "done.json").exists()
    assert not list(output.glob("case*/.*.tmp-*")), "the killed attempt's half-written folder is removed"
