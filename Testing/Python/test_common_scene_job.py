"""Panels run heavy work in a worker process that exchanges files with the scene (``scene_job``).

A job that succeeds creates (or updates) exactly its output nodes, on the input's geometry, with the
same values as the in-process Logic; a job that is killed, cancelled or fails leaves a scene that,
saved, equals the scene saved before it.
"""

import os
import signal
import time

import numpy as np
import pytest
from scene_snapshot import saved_scene

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob
from MedAICommonLib.jobs.worker import WorkerState
from MedAICommonLib.progress import CancelledError, Progress
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAISegLib.logic import MedAISegLogic


def oblique_geometry(shape_kji):
    angle = np.deg2rad(25.0)
    c, s = np.cos(angle), np.sin(angle)
    direction = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]) @ np.diag([-1.0, 1.0, 1.0])
    return Geometry((1.5, 2.0, 3.0), (12.0, -40.0, 7.5), direction, "RAS", shape_kji)


@pytest.fixture
def ct(scene):
    phantom = make_ct_phantom(shape_kji=(16, 30, 28), spacing=(1.5, 2.0, 3.0))
    return bridge.create_volume(scene, phantom.ct, oblique_geometry(phantom.ct.shape), "patient CT")


def otsu_job(scene, ct, output_node=None, extra=()):
    return SceneJob(
        scene,
        ["segment", "{in:ct}", "{out:seg}", "--method", "otsu", *extra],
        inputs={"ct": ct},
        outputs=[JobOutput("seg", "result.seg.nrrd", "patient CT segmentation", node=output_node)],
    )


@pytest.mark.slow  # a worker job end to end (about 9 s)
def test_job_result_equals_in_process_logic_on_an_oblique_grid(scene, ct):
    in_process = MedAISegLogic(scene).otsu(ct)
    expected, expected_geometry, _ = bridge.labelmap_from_segmentation(in_process, bridge.volume_geometry(ct))
    count = scene.GetNumberOfNodes()

    stages = []
    nodes = otsu_job(scene, ct).run(Progress(lambda stage, fraction: stages.append(stage)), timeout=120)

    seg = nodes["seg"]
    assert seg.GetScene() is scene
    assert seg.GetName() == "patient CT segmentation"
    assert scene.GetNumberOfNodes() > count
    labels, geometry, infos = bridge.labelmap_from_segmentation(seg, bridge.volume_geometry(ct))
    assert geometry.ijk_to_physical() == pytest.approx(expected_geometry.ijk_to_physical(), abs=1e-6)
    assert np.array_equal(labels > 0, expected > 0)
    assert [i.name for i in infos] == [i.name for i in bridge.segment_infos(in_process)]
    assert stages, "the worker's progress reached the caller"

    # re-running into the chosen output node updates it instead of adding one
    seg.SetName("my segmentation")
    count, node_id = scene.GetNumberOfNodes(), seg.GetID()
    again = otsu_job(scene, ct, output_node=seg, extra=["--classes", "3"]).run(timeout=120)["seg"]
    assert again is seg
    assert again.GetID() == node_id
    assert again.GetName() == "my segmentation"
    assert scene.GetNumberOfNodes() == count
    assert again.GetSegmentation().GetNumberOfSegments() == 2  # three Otsu classes: two foreground segments


def slow_job(scene, ct):
    """Voxel-wise NLM with a wide search: long enough to be killed while it computes."""
    return SceneJob(
        scene,
        [
            "denoise",
            "{in:ct}",
            "{out:vol}",
            "--method",
            "nlm",
            "--nlm-mode",
            "voxelwise",
            "--search-radius",
            "6",
            "--patch-radius",
            "2",
            "--device",
            "cpu",
        ],
        inputs={"ct": ct},
        outputs=[JobOutput("vol", "denoised.nrrd", "patient CT denoised")],
    )


def wait_until_computing(job, timeout=120.0):
    start = time.monotonic()
    while job.poll() == WorkerState.RUNNING and not job.worker.stage:
        assert time.monotonic() - start < timeout, "the worker reported no progress"
        time.sleep(0.05)
    assert job.worker.state == WorkerState.RUNNING, job.worker.result().log[-5:]


def test_killed_worker_leaves_the_saved_scene_identical(scene, ct, tmp_path):
    before = saved_scene(scene, tmp_path / "before")
    job = slow_job(scene, ct).start()
    folder = job.folder
    wait_until_computing(job)

    os.kill(job.worker.pid, signal.SIGKILL)  # what the out-of-memory killer does
    job.worker.wait(timeout=30)
    with pytest.raises(RuntimeError, match="signal 9.*scene is unchanged"):
        job.finish()

    assert saved_scene(scene, tmp_path / "after") == before
    assert not folder.exists(), "the job's exchange folder was removed"


def test_cancelled_worker_leaves_the_saved_scene_identical(scene, ct, tmp_path):
    before = saved_scene(scene, tmp_path / "before")
    progress = Progress()
    job = slow_job(scene, ct)
    job.on_progress = lambda stage, fraction: progress.cancel()  # the user presses Cancel at the first step
    started = time.monotonic()
    with pytest.raises(CancelledError):
        job.run(progress, timeout=120)
    assert time.monotonic() - started < 60
    assert saved_scene(scene, tmp_path / "after") == before


def test_failed_worker_names_the_problem_and_changes_nothing(scene, ct, tmp_path):
    before = saved_scene(scene, tmp_path / "before")
    model = tmp_path / "model.ts"
    model.write_bytes(b"PK\x03\x04 truncated")
    job = SceneJob(
        scene,
        ["segment", "{in:ct}", "{out:seg}", "--model", str(model), "--device", "cpu"],
        inputs={"ct": ct},
        outputs=[JobOutput("seg", "result.seg.nrrd", "segmentation")],
    )
    with pytest.raises(RuntimeError, match="model") as error:
        job.run(timeout=120)
    assert "Traceback" not in str(error.value)
    assert saved_scene(scene, tmp_path / "after") == before


def test_job_arguments_are_checked_before_anything_runs(scene, ct):
    with pytest.raises(ValueError, match="'mask'"):
        SceneJob(
            scene,
            ["segment", "{in:mask}", "{out:seg}"],
            inputs={"ct": ct},
            outputs=[JobOutput("seg", "s.seg.nrrd", "s")],
        )
    with pytest.raises(ValueError, match="'ct' is not set"):
        SceneJob(scene, ["segment", "{in:ct}"], inputs={"ct": None})
