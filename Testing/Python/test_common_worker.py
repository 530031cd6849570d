"""Heavy work runs in a worker process: a kill or a Cancel cannot touch the caller's scene or outputs."""

import os
import signal
import time

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.progress import CancelledError, Progress
from MedAICommonLib.worker import Worker, WorkerState, run_worker


def wait_for_progress(worker, timeout=60.0):
    start = time.monotonic()
    while worker.poll() == WorkerState.RUNNING and not worker.stage:
        assert time.monotonic() - start < timeout, "the worker reported no progress"
        time.sleep(0.05)
    assert worker.state == WorkerState.RUNNING


def scene_state(scene):
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetMTime())
                  for i in range(scene.GetNumberOfNodes()))


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
    result = run_worker(["convert", str(shared_data / "registration/monai-testing-data/anatomical.nii"), str(out)],
                        progress=progress)
    assert result.state == WorkerState.SUCCEEDED
    node = bridge.load_volume(scene, out)  # outputs are loaded only after success
    assert bridge.array_from_volume(node)[0].shape == (25, 41, 33)
    with pytest.raises(RuntimeError, match="missing.nrrd"):
        run_worker(["convert", str(tmp_path / "missing.nrrd"), str(tmp_path / "x.nrrd")])
