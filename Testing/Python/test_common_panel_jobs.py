"""The panels' heavy runs in a worker process: AI segmentation, registration and planning come back as
the same nodes the in-process Logic makes (geometry, values, SlicerRT dose marks, fixed/moving references).
"""

import dataclasses
import json

import numpy as np
import pydicom
import pytest
import torch
from test_seg_inference import THRESHOLD, threshold_net

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry, rotation_matrix
from MedAICommonLib.jobs.job_messages import job_failure_message
from MedAICommonLib.jobs.scene_job import SceneJob
from MedAICommonLib.jobs.worker import WorkerState
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIPlanLib.evaluation.dose_volume import DOSE_VOLUME_ATTRIBUTE, mark_as_dose_volume
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic
from MedAIPlanLib.gamma_worker_logic import gamma_job
from MedAIPlanLib.rt_worker_logic import exported_modalities, rt_export_job
from MedAIPlanLib.worker_logic import plan_job
from MedAIRegisterLib.worker_logic import register_job
from MedAISegLib.logic import MedAISegLogic
from MedAISegLib.preprocess_worker_logic import denoise_job
from MedAISegLib.worker_logic import segment_with_model_job


@pytest.mark.slow  # a worker job end to end (5-9 s); test_pythonslicer_jobs runs these jobs too
def test_model_segmentation_job_lands_on_the_input_voxels_in_ras(scene, shared_data, tmp_path):
    head = bridge.load_volume(scene, shared_data / "registration/monai-testing-data/anatomical.nii")
    assert not np.allclose(bridge.volume_geometry(head).direction, np.eye(3))
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(threshold_net()), str(model))
    card = {"name": "bright", "roi_size": [16, 16, 16], "labels": [{"value": 1, "name": "bright tissue"}]}
    (tmp_path / "net.ts.json").write_text(json.dumps(card))

    nodes = segment_with_model_job(scene, [head], str(model), device="cpu", uncertainty=True).run(timeout=300)
    seg = nodes["segmentation"]
    entropy, entropy_geometry = bridge.array_from_volume(nodes["uncertainty"])
    assert entropy_geometry.same_grid(bridge.volume_geometry(head))
    assert entropy.min() >= 0.0
    assert entropy.max() <= np.log(2) + 1e-4  # two classes: at most ln 2 nats

    mask, geometry = bridge.segment_mask(seg, "bright tissue")
    array, head_geometry = bridge.array_from_volume(head)
    labelled = geometry.index_to_point(np.argwhere(mask)[:, ::-1].astype(float))
    bright = head_geometry.index_to_point(np.argwhere(array > THRESHOLD)[:, ::-1].astype(float))
    assert len(labelled) == len(bright) > 0
    assert sorted(map(tuple, np.round(labelled, 3).tolist())) == sorted(map(tuple, np.round(bright, 3).tolist()))
    assert seg.GetName() == "anatomical segmentation"


@pytest.mark.slow  # a worker job end to end (5-9 s); test_pythonslicer_jobs runs these jobs too
def test_registration_job_transform_aligns_moving_with_fixed(scene):
    phantom = make_ct_phantom(shape_kji=(24, 40, 40), spacing=(4.0, 4.0, 5.0), noise_hu=5.0)
    fixed = bridge.create_volume(scene, phantom.ct, phantom.geometry, "fixed")
    moved = Geometry(
        phantom.geometry.spacing,
        np.array(phantom.geometry.origin) + (6.0, -4.0, 5.0),
        phantom.geometry.direction,
        "RAS",
        phantom.ct.shape,
    )
    moving = bridge.create_volume(scene, phantom.ct, moved, "moving")

    nodes = register_job(scene, fixed, moving, transform_type="rigid", preset="ct-ct", device="cpu").run(timeout=300)

    matrix = bridge.matrix_from_transform_node(nodes["transform"])  # to-parent, RAS: moves moving onto fixed
    np.testing.assert_allclose(matrix[:3, 3], (-6.0, 4.0, -5.0), atol=1.0)
    np.testing.assert_allclose(matrix[:3, :3], np.eye(3), atol=0.02)
    assert nodes["transform"].GetNodeReference("fixed") is fixed
    assert nodes["transform"].GetNodeReference("moving") is moving
    assert bridge.volume_geometry(nodes["volume"]).same_grid(bridge.volume_geometry(fixed))


@pytest.mark.slow  # end-to-end worker job; test_pythonslicer_jobs runs the same job in the fast suite
def test_plan_job_returns_a_marked_dose_volume_on_the_ct_grid(scene, tmp_path):
    phantom = make_ct_phantom(shape_kji=(20, 36, 36), spacing=(5.0, 5.0, 5.0), direction=rotation_matrix("z", 0.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    structures = bridge.create_segmentation(
        scene,
        phantom.labels,
        phantom.geometry,
        [SegmentInfo(v, n) for v, n in phantom.names.items()],
        "structures",
        reference_volume=ct,
    )

    job = plan_job(
        scene,
        ct,
        structures,
        target="lesion",
        prescription_gy=60.0,
        fractions=30,
        gantry_angles=(0, 120, 240),
        bixel_width_mm=10.0,
        dose_grid_mm=5.0,
        device="cpu",
    )
    dose = job.run(timeout=600)["dose"]

    assert dose.GetAttribute(DOSE_VOLUME_ATTRIBUTE) == "1"
    assert dose.GetAttribute("MedAIPlan.PrescriptionGy") == "60.0"
    assert dose.GetAttribute("MedAIPlan.GantryAngles") == "0,120,240"
    values, geometry = bridge.array_from_volume(dose)
    assert geometry.same_grid(bridge.volume_geometry(ct))
    lesion, _ = bridge.segment_mask(structures, "lesion")
    assert np.median(values[lesion > 0]) == pytest.approx(60.0, rel=0.1)
    assert values[lesion == 0].mean() < 0.5 * 60.0

    # the panel's DICOM-RT export of that plan, in a worker: the RTPLAN beams are rebuilt there from the
    # dose node's plan attributes, which the panel passes on the command line (a .nrrd does not keep them)
    assert exported_modalities(dose, structures) == ["RTSTRUCT", "RTPLAN", "RTDOSE"]
    nodes_before = scene.GetNumberOfNodes()
    assert rt_export_job(scene, tmp_path / "rt", dose, structures).run(timeout=300) == {}
    assert scene.GetNumberOfNodes() == nodes_before
    plan = pydicom.dcmread(str(tmp_path / "rt" / "RTPLAN.dcm"))
    gantry = [float(beam.ControlPointSequence[0].GantryAngle) for beam in plan.BeamSequence]
    assert gantry == [0.0, 120.0, 240.0]
    assert float(plan.FractionGroupSequence[0].NumberOfFractionsPlanned) == 30
    rtdose = pydicom.dcmread(str(tmp_path / "rt" / "RTDOSE.dcm"))
    assert float(rtdose.DoseGridScaling) * int(rtdose.pixel_array.max()) == pytest.approx(values.max(), rel=0.01)


def test_a_failed_worker_job_is_reported_with_its_own_error_and_stderr_tail(scene, tmp_path):
    """What the panel's error dialog gets when a worker fails: the worker's one-line cause, its stderr as details."""
    missing = tmp_path / "absent" / "RTDOSE.dcm"
    job = SceneJob(scene, ["rt-import", str(missing), "--output-dir", "{dir}"]).start()
    assert job.worker.wait(timeout=120).state == WorkerState.FAILED
    outcome = job.worker.result()
    assert outcome.error.startswith("medai rt-import")
    with pytest.raises(RuntimeError) as raised:
        job.finish()

    text, details = job_failure_message("DICOM-RT import failed.", raised.value, outcome)

    assert text.startswith("DICOM-RT import failed.")
    assert outcome.error in text
    assert "absent" in text  # the real cause names the file
    assert details.splitlines()[-1] == outcome.log[-1]
    silent = dataclasses.replace(outcome, error="", log=[])  # a worker killed before it wrote anything
    bare_text, bare_details = job_failure_message("Training failed.", "", silent)
    assert f"exit code {outcome.returncode}" in bare_text
    assert "nothing" in bare_details


@pytest.mark.parametrize("method", ["nlm", "n4"])
@pytest.mark.slow  # a worker job end to end (5-9 s); test_pythonslicer_jobs runs these jobs too
def test_preprocessing_job_gives_what_the_in_process_logic_gives(scene, method):
    """The panel's denoising in a worker: same voxels as the in-process Logic with the panel's settings, on the
    input's oblique grid, named as the Logic names it; the input is untouched."""
    phantom = make_ct_phantom(
        shape_kji=(16, 32, 32), spacing=(4.0, 4.0, 5.0), direction=rotation_matrix("z", 25.0), noise_hu=40.0
    )
    ct = bridge.create_volume(scene, phantom.ct.astype(np.float32), phantom.geometry, "noisy")
    before = bridge.array_from_volume(ct)[0].copy()

    worker_node = denoise_job(scene, ct, method, device="cpu").run(timeout=300)["volume"]
    in_process = MedAISegLogic(scene).denoise(ct, method, device="cpu")

    worker_values, worker_geometry = bridge.array_from_volume(worker_node)
    assert worker_geometry.same_grid(phantom.geometry)
    assert worker_node.GetName() == in_process.GetName() == f"noisy {method}"
    np.testing.assert_allclose(worker_values, bridge.array_from_volume(in_process)[0], rtol=1e-5, atol=1e-3)
    assert np.array_equal(bridge.array_from_volume(ct)[0], before)
    if method == "nlm":
        body = phantom.labels == 1
        assert worker_values[body].std() < 0.6 * before[body].std()


@pytest.mark.slow  # end-to-end worker job; test_pythonslicer_jobs runs the same job in the fast suite
def test_gamma_job_matches_the_in_process_gamma(scene):
    """The panel's gamma in a worker: the same gamma values and pass rate as the in-process Logic, on the
    reference grid, marked as SlicerRT's gamma volume."""
    geometry = Geometry((3.0, 3.0, 3.0), (-45.0, -45.0, -45.0), rotation_matrix("z", 0.0), "RAS", (31, 31, 31))
    k, j, i = np.indices(geometry.shape_kji)
    points = geometry.index_to_point(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(31, 31, 31, 3)

    def dose(shift_mm):
        return (60.0 * np.exp(-((points - shift_mm) ** 2).sum(-1) / (2 * 15.0**2))).astype(np.float32)

    reference = mark_as_dose_volume(bridge.create_volume(scene, dose((0.0, 0.0, 0.0)), geometry, "reference"))
    evaluated = mark_as_dose_volume(bridge.create_volume(scene, dose((2.5, 0.0, 0.0)), geometry, "evaluated"))

    node = gamma_job(scene, reference, evaluated, 2.0, 2.0, 10.0, device="cpu").run(timeout=300)["gamma"]
    in_process, result = PlanEvaluationLogic(scene).gamma(reference, evaluated, 2.0, 2.0, 10.0, device="cpu")

    values, gamma_geometry = bridge.array_from_volume(node)
    assert gamma_geometry.same_grid(geometry)
    np.testing.assert_allclose(values, bridge.array_from_volume(in_process)[0], atol=1e-4)
    assert node.GetAttribute("DoseComparison.GammaVolume") == "1"
    assert float(node.GetAttribute("MedAI.GammaPassRate")) == pytest.approx(result.pass_rate, abs=1e-6)
    assert 0.0 < result.pass_rate < 100.0  # a 2.5 mm shift fails 2 %/2 mm somewhere
    assert node.GetAttribute("MedAI.GammaInterpolation") == in_process.GetAttribute("MedAI.GammaInterpolation")
