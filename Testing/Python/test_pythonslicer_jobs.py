"""Every background job runs in a worker whose ``slicer`` is exactly what Slicer's PythonSlicer has.

In Slicer the panels' workers are ``PythonSlicer -m MedAICommonLib.cli ...``; there ``slicer`` holds
the kits of ``Base/Python/CMakeLists.txt`` (MRML, vtkAddon, vtkSegmentationCore, the base logic) and
no module logic. :mod:`pythonslicer` builds that package from Slicer's own Python layer and
slicer-core's compiled libraries; each job here runs through the real SceneJob/Worker in a child
whose ``PYTHONPATH`` starts with it, reports progress and comes back as nodes in the scene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pythonslicer import SLICER_REFERENCE, build_pythonslicer, standalone_kits
from test_seg_inference import threshold_net, write_bundle

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry, rotation_matrix
from MedAICommonLib.jobs.worker import worker_environment
from MedAICommonLib.progress import Progress
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIPlanLib.evaluation.dose_volume import DOSE_VOLUME_ATTRIBUTE, mark_as_dose_volume
from MedAIPlanLib.gamma_worker_logic import gamma_job
from MedAIPlanLib.rt_worker_logic import rt_export_job
from MedAIPlanLib.worker_logic import plan_job
from MedAIRegisterLib.logic import MedAIRegisterLogic
from MedAIRegisterLib.worker_logic import register_job
from MedAISegLib.learning.phantom_cases import make_phantom_case
from MedAISegLib.preprocess_worker_logic import denoise_job
from MedAISegLib.training_logic import MedAITrainingLogic
from MedAISegLib.worker_logic import explain_job, fine_tune_job, segment_with_model_job, train_job

NAMESPACE_PROBE = """
import json, sys
import numpy as np
import slicer
from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.runtime import get_scene
masks = {"outer": np.zeros((6, 7, 8), bool), "inner": np.zeros((6, 7, 8), bool)}
masks["outer"][1:5, 1:6, 1:7] = True
masks["inner"][2:4, 2:5, 2:6] = True
scene = get_scene()
node = bridge.create_segmentation_from_masks(scene, masks, Geometry((1.0, 2.0, 3.0)), "s")
path = bridge.save_node(node, sys.argv[1])
read, _ = bridge.segment_masks(bridge.load_segmentation(scene, path))
points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0]])
markups = bridge.load_markups(scene, bridge.save_node(bridge.create_markups(scene, points, "p"), sys.argv[2]))
print(json.dumps({"scene": hasattr(slicer, "vtkMRMLScene"), "colors": hasattr(slicer, "vtkSlicerColorLogic"),
                  "segmentations": hasattr(slicer, "vtkSlicerSegmentationsModuleLogic"),
                  "kits": all(hasattr(slicer, c) for c in ("vtkSegment", "vtkMRMLColorLogic", "vtkAddonMathUtilities")),
                  "app": hasattr(slicer, "app"), "modules": [n for n in vars(slicer.modules) if not n.startswith("_")],
                  "file": slicer.__file__, "same": all(np.array_equal(read[n], m) for n, m in masks.items()),
                  "points": np.allclose(bridge.points_from_markups(markups), points)}))
"""


def _reference_versions() -> list[str]:
    return sorted(p.name for p in SLICER_REFERENCE.iterdir() if p.is_dir()) if SLICER_REFERENCE.is_dir() else []


@pytest.fixture(scope="module")
def pythonslicer(tmp_path_factory):
    """The extra environment that gives a worker PythonSlicer's ``slicer`` package."""
    if not SLICER_REFERENCE.is_dir():
        message = f"Slicer's reference sources not found at {SLICER_REFERENCE}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return {"PYTHONPATH": str(build_pythonslicer(tmp_path_factory.mktemp("pythonslicer")))}


@pytest.fixture(autouse=True)
def private_trust_store(tmp_path, monkeypatch):
    """Bundles exported here are trusted in a per-test store (the workers inherit it), never the user's."""
    monkeypatch.setenv("MEDAI_TRUST_STORE", str(tmp_path / "trust" / "trusted_bundles.json"))


def run_job(job, env, timeout, expect_progress=True):
    """Run a panel's job in a PythonSlicer worker; returns its nodes and the progress stages it reported."""
    job.env = env
    stages = []
    nodes = job.run(Progress(lambda stage, fraction: stages.append(stage)), timeout=timeout)
    if expect_progress:
        assert stages, "the worker reported no progress"
    return nodes, stages


@pytest.mark.parametrize("version", _reference_versions())
def test_the_namespace_has_pythonslicers_kits_and_no_module_logic(version, tmp_path):
    env = {"PYTHONPATH": str(build_pythonslicer(tmp_path / "ps", version))}
    assert {"mrml", "vtkAddon", "vtkSegmentationCore", "logic"} <= set(standalone_kits(version))
    # the environment the worker gives its child, so this is the namespace jobs run in
    # (and the runtime and the bridge work in it: overlapping masks through .seg.nrrd, points through .mrk.json)
    result = subprocess.run([sys.executable, "-c", NAMESPACE_PROBE, str(tmp_path / "s.seg.nrrd"),
                             str(tmp_path / "p.mrk.json")],
                            env=worker_environment(env), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["file"].startswith(str(tmp_path / "ps"))
    assert seen["scene"]
    assert seen["kits"]
    assert not seen["colors"]
    assert not seen["segmentations"]
    assert not seen["app"]
    assert seen["modules"] == []
    assert seen["same"]
    assert seen["points"]


def _ct_and_threshold_model(scene, folder):
    """A CT phantom on a rotated grid and a TorchScript model with its card: ``dense tissue`` is ``HU > 45``."""
    phantom = make_ct_phantom(shape_kji=(14, 24, 22), spacing=(2.0, 1.5, 1.5), direction=rotation_matrix("z", 30.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "patient CT")
    model = folder / "net.ts"
    torch.jit.save(torch.jit.script(threshold_net(threshold=45.0)), str(model))
    card = {"name": "dense", "roi_size": [16, 16, 16], "labels": [{"value": 1, "name": "dense tissue"}]}
    (folder / "net.ts.json").write_text(json.dumps(card))
    return phantom, ct, model


def test_model_segmentation_job(scene, pythonslicer, tmp_path):
    phantom, ct, model = _ct_and_threshold_model(scene, tmp_path)

    nodes, _ = run_job(segment_with_model_job(scene, [ct], str(model), device="cpu", uncertainty=True),
                       pythonslicer, timeout=300)

    mask, geometry = bridge.segment_mask(nodes["segmentation"], "dense tissue")
    assert geometry.same_grid(bridge.volume_geometry(ct))
    np.testing.assert_array_equal(mask, phantom.ct > 45.0)
    assert 0 < mask.sum() < mask.size / 2
    entropy, entropy_geometry = bridge.array_from_volume(nodes["uncertainty"])
    assert entropy_geometry.same_grid(bridge.volume_geometry(ct))
    assert 0.0 <= entropy.min() <= entropy.max() <= np.log(2) + 1e-4


def test_explain_job_gives_the_in_process_saliency(scene, pythonslicer, tmp_path):
    phantom, ct, model = _ct_and_threshold_model(scene, tmp_path)
    in_process = MedAITrainingLogic(scene).explain(ct, str(model), device="cpu")
    expected, _ = bridge.array_from_volume(in_process)

    nodes, stages = run_job(explain_job(scene, ct, str(model), device="cpu"), pythonslicer, timeout=300)

    saliency, geometry = bridge.array_from_volume(nodes["saliency"])
    assert geometry.same_grid(bridge.volume_geometry(ct))
    assert "explaining" in stages
    # gradient x input of "HU > 45": the saliency lies exactly on the dense voxels, peak scaled to 1
    np.testing.assert_array_equal(saliency > 0, phantom.ct > 45.0)
    assert saliency.max() == pytest.approx(1.0)
    np.testing.assert_allclose(saliency, expected, atol=1e-5)
    assert nodes["saliency"].GetName() == "patient CT saliency"


@pytest.mark.slow  # a PythonSlicer job end to end (9-19 s); the model segmentation and rigid registration jobs stay in the fast suite
def test_explain_job_runs_an_untrusted_bundle_only_when_trusted(scene, pythonslicer, tmp_path):
    from monai.networks.nets import UNet

    phantom = make_ct_phantom(shape_kji=(16, 24, 24), spacing=(4.0, 4.0, 4.0))
    ct = bridge.create_volume(scene, phantom.ct / 1000.0, phantom.geometry, "ct")
    bundle = write_bundle(tmp_path / "bundle")  # written here, so not trusted
    definition = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                  "channels": [4, 8], "strides": [2], "num_res_units": 0}
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"] = definition
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    args = {k: v for k, v in definition.items() if k != "_target_"}
    torch.save(UNet(**args).state_dict(), bundle / "models" / "model.pt")
    count = scene.GetNumberOfNodes()

    with pytest.raises(RuntimeError, match="not trusted"):
        run_job(explain_job(scene, ct, str(bundle), device="cpu"), pythonslicer, timeout=300, expect_progress=False)
    assert scene.GetNumberOfNodes() == count
    nodes, _ = run_job(explain_job(scene, ct, str(bundle), device="cpu", trust_bundle=True), pythonslicer, timeout=300)

    logic = MedAITrainingLogic(scene)  # the worker recorded the trust in the (per-test) store
    expected, _ = bridge.array_from_volume(logic.explain(ct, str(bundle), device="cpu"))
    assert logic.last_result.method == "gradcam"
    saliency, geometry = bridge.array_from_volume(nodes["saliency"])
    assert geometry.same_grid(bridge.volume_geometry(ct))
    assert saliency.max() == pytest.approx(1.0)
    np.testing.assert_allclose(saliency, expected, atol=1e-4)


@pytest.mark.slow  # a PythonSlicer job end to end (9-19 s); the model segmentation and rigid registration jobs stay in the fast suite
def test_planning_job(scene, pythonslicer):
    phantom = make_ct_phantom(shape_kji=(16, 28, 28), spacing=(6.0, 6.0, 6.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    structures = bridge.create_segmentation(scene, phantom.labels, phantom.geometry,
                                            [SegmentInfo(v, n) for v, n in phantom.names.items()], "structures",
                                            reference_volume=ct)
    job = plan_job(scene, ct, structures, target="lesion", prescription_gy=60.0, fractions=30,
                   gantry_angles=(0, 120, 240), bixel_width_mm=10.0, dose_grid_mm=6.0, device="cpu")

    nodes, _ = run_job(job, pythonslicer, timeout=300)

    dose = nodes["dose"]
    assert dose.GetAttribute(DOSE_VOLUME_ATTRIBUTE) == "1"
    values, geometry = bridge.array_from_volume(dose)
    assert geometry.same_grid(bridge.volume_geometry(ct))
    lesion, _ = bridge.segment_mask(structures, "lesion")
    assert np.median(values[lesion]) == pytest.approx(60.0, rel=0.1)
    assert values[~lesion].mean() < 0.5 * 60.0


@pytest.mark.slow  # a PythonSlicer job end to end (9-19 s); the model segmentation and rigid registration jobs stay in the fast suite
def test_bspline_registration_job(scene, pythonslicer):
    phantom = make_ct_phantom(shape_kji=(16, 24, 24), spacing=(5.0, 5.0, 6.0), noise_hu=5.0)
    fixed = bridge.create_volume(scene, phantom.ct, phantom.geometry, "fixed")
    moved = Geometry(phantom.geometry.spacing, np.array(phantom.geometry.origin) + (4.0, -4.0, 0.0),
                     phantom.geometry.direction, "RAS", phantom.ct.shape)
    moving = bridge.create_volume(scene, phantom.ct, moved, "moving")
    before = np.abs(bridge.resample_array(phantom.ct, moved, phantom.geometry) - phantom.ct).mean()

    nodes, stages = run_job(register_job(scene, fixed, moving, transform_type="bspline", device="cpu"),
                            pythonslicer, timeout=600)

    assert nodes["transform"].IsA("vtkMRMLTransformNode")
    assert not nodes["transform"].IsLinear()
    assert nodes["transform"].GetNodeReference("moving") is moving
    registered, geometry = bridge.array_from_volume(nodes["volume"])
    assert geometry.same_grid(bridge.volume_geometry(fixed))
    assert np.abs(registered - phantom.ct).mean() < 0.6 * before
    assert stages


def _turned_pair(scene):
    """A CT phantom and a copy whose anatomy is turned by 5 degrees about S inside the same axis-aligned grid."""
    phantom = make_ct_phantom(shape_kji=(24, 40, 40), spacing=(4.0, 4.0, 5.0), noise_hu=5.0)
    turned = make_ct_phantom(shape_kji=(24, 40, 40), spacing=(4.0, 4.0, 5.0), noise_hu=5.0, seed=1,
                             direction=rotation_matrix("z", 5.0))
    fixed = bridge.create_volume(scene, phantom.ct, phantom.geometry, "fixed")
    moving = bridge.create_volume(scene, turned.ct, phantom.geometry, "moving")
    return phantom, fixed, moving


def test_masked_rigid_registration_job_gives_the_in_process_transform(scene, pythonslicer):
    # the moving anatomy is turned by 5 degrees about S inside an axis-aligned grid, so both volumes go through
    # the worker's files unchanged (a rotated grid direction would be rounded in the NRRD header)
    phantom, fixed, moving = _turned_pair(scene)
    body = (phantom.labels > 0).astype(np.uint8)  # the metric ignores the air around the body
    mask = bridge.create_segmentation(scene, body, phantom.geometry, [SegmentInfo(1, "body outline")], "mask")
    logic = MedAIRegisterLogic(scene)
    expected = bridge.matrix_from_transform_node(logic.register_volumes(
        fixed, moving, "rigid", "ct-ct", "cpu", fixed_mask=(mask, "body outline"), sampling_percentage=0.5))
    default = bridge.matrix_from_transform_node(logic.register_volumes(fixed, moving, "rigid", "ct-ct", "cpu"))

    job = register_job(scene, fixed, moving, transform_type="rigid", preset="ct-ct", device="cpu",
                       sampling_percentage=50.0, fixed_mask=mask)
    nodes, stages = run_job(job, pythonslicer, timeout=600)

    matrix = bridge.matrix_from_transform_node(nodes["transform"])  # to-parent RAS: moves moving onto fixed
    np.testing.assert_allclose(matrix[:3, :3], expected[:3, :3], atol=1e-5)
    np.testing.assert_allclose(matrix[:3, 3], expected[:3, 3], atol=1e-3)  # mm
    assert np.abs(default[:3, 3] - expected[:3, 3]).max() > 0.1  # the mask and the sampling changed the result
    truth = np.eye(4)
    truth[:3, :3] = rotation_matrix("z", 5.0)  # moving RAS -> fixed RAS
    corners = np.c_[bridge.volume_geometry(fixed).index_to_point(np.array([[0, 0, 0], [39, 39, 23.0]])), np.ones(2)]
    assert np.abs(corners @ (matrix - truth).T).max() < 2.5  # mm: half a 5 mm slice, at the fixed volume's corners
    assert nodes["transform"].GetNodeReference("moving") is moving
    assert {"registering", "done"} <= set(stages)


def test_custom_metric_similarity_job_with_a_label_map_mask(scene, pythonslicer):
    phantom, fixed, moving = _turned_pair(scene)
    body = bridge.create_volume(scene, (phantom.labels > 0).astype(np.uint8), phantom.geometry, "body label map")
    # the panel's "custom" preset: CT-CT settings with the chosen metric
    expected = bridge.matrix_from_transform_node(MedAIRegisterLogic(scene).register_volumes(
        fixed, moving, "similarity", "ct-ct", "cpu", metric="correlation", moving_mask=body,
        sampling_percentage=0.3))

    job = register_job(scene, fixed, moving, transform_type="similarity", preset="custom", metric="correlation",
                       device="cpu", sampling_percentage=30.0, moving_mask=body, resample=False)
    nodes, _ = run_job(job, pythonslicer, timeout=600)

    matrix = bridge.matrix_from_transform_node(nodes["transform"])
    np.testing.assert_allclose(matrix[:3, :3], expected[:3, :3], atol=1e-4)
    np.testing.assert_allclose(matrix[:3, 3], expected[:3, 3], atol=0.01)  # mm
    np.testing.assert_allclose(matrix[:3, :3], rotation_matrix("z", 5.0), atol=0.02)
    assert set(nodes) == {"transform"}


def _case_nodes(scene, seeds):
    volumes, labels = [], []
    for seed in seeds:
        image, label = make_phantom_case(seed)
        volumes.append(bridge.sitk_to_volume(image, scene, f"case {seed}"))
        array, geometry = bridge.sitk_to_array(label)
        labels.append(bridge.create_segmentation(scene, array, geometry, [SegmentInfo(1, "label 1")], f"labels {seed}"))
    return volumes, labels


@pytest.mark.slow
def test_training_then_fine_tuning_jobs(scene, pythonslicer, tmp_path):
    volumes, labels = _case_nodes(scene, range(3))
    bundle = tmp_path / "bundle"
    job = train_job(scene, volumes, labels, str(bundle), epochs=2, spacing_mm=2.0, device="cpu")
    job.args += ["--roi", "24", "24", "24", "--features", "8", "--samples-per-case", "1"]
    count = scene.GetNumberOfNodes()
    assert run_job(job, pythonslicer, timeout=600)[0] == {}
    assert scene.GetNumberOfNodes() == count
    weights = next((bundle / "models").glob("model.*"))
    stamp = weights.stat().st_mtime_ns

    assert run_job(fine_tune_job(scene, volumes[0], labels[0], str(bundle), str(bundle), epochs=2, device="cpu"),
                   pythonslicer, timeout=600)[0] == {}
    assert weights.stat().st_mtime_ns != stamp

    nodes, _ = run_job(segment_with_model_job(scene, [volumes[1]], str(bundle), device="cpu"), pythonslicer,
                       timeout=300)
    assert bridge.segment_infos(nodes["segmentation"])[0].name == "label 1"
    assert bridge.reference_geometry(nodes["segmentation"]).same_grid(bridge.volume_geometry(volumes[1]))



@pytest.mark.slow  # a PythonSlicer job end to end (9-19 s); the model segmentation and rigid registration jobs stay in the fast suite
def test_gamma_rt_export_and_denoising_jobs(scene, pythonslicer, tmp_path):
    phantom = make_ct_phantom(shape_kji=(12, 20, 20), spacing=(4.0, 4.0, 4.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    body = (phantom.labels > 0).astype(np.float32)
    dose = mark_as_dose_volume(bridge.create_volume(scene, 2.0 * body, phantom.geometry, "dose"))
    evaluated = mark_as_dose_volume(bridge.create_volume(scene, 2.04 * body, phantom.geometry, "dose 2"))
    structures = bridge.create_segmentation(scene, phantom.labels, phantom.geometry,
                                            [SegmentInfo(v, n) for v, n in phantom.names.items()], "structures",
                                            reference_volume=ct)

    gamma = run_job(gamma_job(scene, dose, evaluated, device="cpu"), pythonslicer, timeout=300)[0]["gamma"]
    values, geometry = bridge.array_from_volume(gamma)
    assert geometry.same_grid(bridge.volume_geometry(dose))
    assert float(gamma.GetAttribute("MedAI.GammaPassRate")) == 100.0  # a 2 % dose difference passes 3 %/3 mm
    assert 0.5 < values.max() < 1.0  # gamma = 2/3 inside the body

    folder = tmp_path / "rt"
    assert run_job(rt_export_job(scene, folder, dose, structures), pythonslicer, timeout=300,
                   expect_progress=False)[0] == {}
    assert {p.name for p in folder.iterdir()} >= {"RTDOSE.dcm", "RTSTRUCT.dcm"}

    smoothed = run_job(denoise_job(scene, ct, "curvature", device="cpu"), pythonslicer, timeout=300)[0]["volume"]
    array, geometry = bridge.array_from_volume(smoothed)
    assert geometry.same_grid(bridge.volume_geometry(ct))
    assert np.abs(np.diff(array, axis=2)).mean() < np.abs(np.diff(phantom.ct, axis=2)).mean()
