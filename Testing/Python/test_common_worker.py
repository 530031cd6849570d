"""Heavy work runs in a worker process: a kill or a Cancel cannot touch the caller's scene or outputs."""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.jobs.worker import (
    Worker,
    WorkerState,
    error_line,
    kill_tree_command,
    popen_options,
    run_worker,
    worker_environment,
)
from MedAICommonLib.progress import CancelledError, Progress


def wait_for_progress(worker, timeout=60.0):
    start = time.monotonic()
    while worker.poll() == WorkerState.RUNNING and not worker.stage:
        assert time.monotonic() - start < timeout, "the worker reported no progress"
        time.sleep(0.05)
    assert worker.state == WorkerState.RUNNING


def scene_state(scene):
    return sorted(
        (scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetMTime()) for i in range(scene.GetNumberOfNodes())
    )


def test_worker_killed_mid_run_leaves_scene_and_outputs_untouched(scene, tmp_path):
    ct = bridge.create_volume(scene, np.zeros((4, 5, 6), np.int16), Geometry(), "user's unsaved CT")
    before = scene_state(scene)
    worker = Worker(["demo", "--output", str(tmp_path / "demo")]).start()
    wait_for_progress(worker)
    os.kill(worker.pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    result = worker.wait(timeout=30)
    assert result.state == WorkerState.FAILED
    assert "signal 9" in result.error
    assert not (tmp_path / "demo" / "overview.png").exists()
    assert scene_state(scene) == before
    assert ct.GetScene() is scene


def test_cancel_stops_the_worker_within_a_second_or_two(tmp_path):
    progress = Progress()
    worker = Worker(["demo", "--output", str(tmp_path / "demo")]).start()
    wait_for_progress(worker)
    started = time.monotonic()
    worker.cancel(grace_s=0.5)
    assert worker.poll() == WorkerState.CANCELLED
    assert time.monotonic() - started < 2.0
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)  # the whole process group is gone
    progress.cancel()
    with pytest.raises(CancelledError):
        run_worker(["demo", "--output", str(tmp_path / "demo2")], progress=progress)


def test_worker_success_and_failure_are_reported(scene, tmp_path, shared_data):
    out = tmp_path / "anat.nrrd"
    seen = []
    progress = Progress(lambda stage, fraction: seen.append(stage))
    result = run_worker(
        ["convert", str(shared_data / "registration/monai-testing-data/anatomical.nii"), str(out)], progress=progress
    )
    assert result.state == WorkerState.SUCCEEDED
    node = bridge.load_volume(scene, out)  # outputs are loaded only after success
    assert bridge.array_from_volume(node)[0].shape == (25, 41, 33)
    with pytest.raises(RuntimeError, match="missing.nrrd"):
        run_worker(["convert", str(tmp_path / "missing.nrrd"), str(tmp_path / "x.nrrd")])


def test_cancel_ends_the_worker_and_its_group_within_a_second(tmp_path):
    worker = Worker(["demo", "--output", str(tmp_path / "demo")]).start()
    wait_for_progress(worker)
    started = time.monotonic()
    worker.cancel(grace_s=0.5)
    assert time.monotonic() - started < 1.0
    assert worker.poll() == WorkerState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)


def test_a_crash_without_a_medai_line_reports_the_last_stderr_line():
    """A worker that dies in a traceback (e.g. an import error in PythonSlicer) names the exception."""
    crash = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('loading the model\\n\\n'); "
        "raise AttributeError(\"module 'slicer' has no attribute 'vtkSlicerColorLogic'\")",
    ]
    result = Worker([], python=crash).start().wait(timeout=60)
    assert result.state == WorkerState.FAILED
    assert result.error == "AttributeError: module 'slicer' has no attribute 'vtkSlicerColorLogic'"
    assert (
        error_line(["Traceback (most recent call last):", "  File ...", "ValueError: bad", "", "  "])
        == "ValueError: bad"
    )
    assert (
        error_line(["medai plan: warning: w", "medai plan: error: the target is empty", "Traceback"])
        == "medai plan: error: the target is empty"
    )


def test_windows_start_and_cancel_use_no_posix_call():
    """On Windows: a new process group without a console, and Cancel ends the whole tree with taskkill."""
    assert popen_options(windows=True) == {"creationflags": 0x00000200 | 0x08000000}
    assert popen_options(windows=False) == {"start_new_session": True}
    assert kill_tree_command(4242) == ["taskkill", "/T", "/F", "/PID", "4242"]


def test_the_child_python_path_starts_with_the_folders_of_the_imported_packages():
    import MedAICommonLib
    import MedAISegLib

    env = worker_environment({"PYTHONPATH": os.pathsep.join(["/opt/slicer/bin/Python", "/x"])}, base={})
    entries = env["PYTHONPATH"].split(os.pathsep)
    folders = [str(Path(p.__file__).resolve().parents[1]) for p in (MedAICommonLib, MedAISegLib)]
    assert entries[:2] == folders
    assert entries[-2:] == ["/opt/slicer/bin/Python", "/x"]
    assert len(entries) == 6
    assert env["PYTHONUNBUFFERED"] == "1"
