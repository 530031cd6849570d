"""The issue's scale test: 200 generated cases through denoise -> segment -> plan -> dvh on 2 Dask workers.

One worker is killed mid-run; every case still ends with exactly one result per step, none written twice.
A second run recomputes nothing; a changed plan parameter redoes plan and dvh only. Slow (minutes):
``pytest -m slow Testing/Python/test_batch_scale.py``.
"""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter

import pytest
from batch_cohort import PLANNING_STEPS, done_log, kill_a_busy_worker, write_cohort, write_pipeline

from MedAICommonLib.cli.main import main

distributed = pytest.importorskip("distributed")
CASES = 200
STEPS = ("denoise", "segment", "plan", "dvh")


def _batch(manifest, pipeline, output, report, address) -> tuple[int, dict]:
    code = main(
        [
            "batch",
            str(manifest),
            "--pipeline",
            str(pipeline),
            "--output",
            str(output),
            "--report",
            str(report),
            "--scheduler",
            address,
        ]
    )
    return code, json.loads(report.read_text())


@pytest.mark.slow
def test_two_hundred_cases_on_two_workers_exactly_once_resumable(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", CASES)
    output, pipeline = tmp_path / "results", write_pipeline(tmp_path / "p.yaml", PLANNING_STEPS)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as local,
        distributed.Client(local) as client,
    ):
        outcome = {}
        run = threading.Thread(
            target=lambda: outcome.update(
                zip(
                    ("code", "report"),
                    _batch(manifest, pipeline, output, tmp_path / "run1.json", local.scheduler_address),
                )
            )
        )
        run.start()
        kill_a_busy_worker(client, output, after=40, timeout=900)
        run.join(timeout=3600)
        assert outcome["code"] == 0, outcome["report"]["metrics"].get("failed")
        written = Counter((e["case"], e["step"]) for e in done_log(output))
        assert len(written) == CASES * len(STEPS), "one result per case-step"
        assert max(written.values()) == 1, "no case-step written twice"
        with (output / "cohort.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == CASES
        assert all(row["status"] == "done" for row in rows)
        d95 = [float(row["plan.target_D95_percent_of_prescription"]) for row in rows]
        assert min(d95) > 50.0, "every plan covers its target (D95 in % of the 60 Gy prescription)"

        code, report = _batch(manifest, pipeline, output, tmp_path / "run2.json", local.scheduler_address)
        assert code == 0
        assert report["metrics"]["steps_run"] == 0
        assert report["metrics"]["steps_skipped"] == CASES * len(STEPS)

        changed = [dict(step) for step in PLANNING_STEPS]
        changed[2]["args"] = [a if a != "0,120,240" else "0,90,180,270" for a in changed[2]["args"]]
        before = len(done_log(output))
        code, report = _batch(
            manifest,
            write_pipeline(tmp_path / "changed.yaml", changed),
            output,
            tmp_path / "run3.json",
            local.scheduler_address,
        )
        assert code == 0
        assert report["metrics"]["steps_run"] == 2 * CASES
        assert Counter(e["step"] for e in done_log(output)[before:]) == {"plan": CASES, "dvh": CASES}


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_later_run_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from batch_cohort import SEGMENTATION_STEPS

    manifest = write_cohort(tmp_path / "cohort", 16)
    output, pipeline = tmp_path / "results", write_pipeline(tmp_path / "p.yaml", SEGMENTATION_STEPS)
    command = [
        sys.executable,
        "-m",
        "MedAICommonLib.cli",
        "batch",
        str(manifest),
        "--pipeline",
        str(pipeline),
        "--output",
        str(output),
        "--workers",
        "2",
        "--report",
        str(tmp_path / "run1.json"),
    ]
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(done_log(output)) < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    first = json.loads((tmp_path / "run1.json").read_text())["metrics"]
    assert first["cases_done"] < 16
    code, report = _batch_embedded(manifest, pipeline, output, tmp_path / "run2.json")
    assert code == 0
    assert report["metrics"]["cases_done"] == 16
    assert report["metrics"]["steps_skipped"] >= first["steps_run"]
    assert max(Counter((e["case"], e["step"]) for e in done_log(output)).values()) == 1


def _batch_embedded(manifest, pipeline, output, report) -> tuple[int, dict]:
    code = main(
        [
            "batch",
            str(manifest),
            "--pipeline",
            str(pipeline),
            "--output",
            str(output),
            "--report",
            str(report),
            "--workers",
            "2",
        ]
    )
    return code, json.loads(report.read_text())
