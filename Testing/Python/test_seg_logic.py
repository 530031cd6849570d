"""MedAISeg Logic on real MRML nodes: shared scenarios, AI models end to end in RAS, tables, errors."""

import json

import numpy as np
import pytest
import torch
from test_seg_inference import THRESHOLD, threshold_net, write_bundle  # noqa: I001

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry
from MedAISegLib import scenarios
from MedAISegLib.logic import MedAISegLogic

SCENARIOS = sorted(n for n in dir(scenarios) if n.startswith("scenario_"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(scene, name):
    getattr(scenarios, name)(scene)


@pytest.fixture
def head_node(scene, shared_data):
    return bridge.load_volume(scene, shared_data / "registration/monai-testing-data/anatomical.nii")


def bright_points_ras(node):
    """RAS positions (mm) of the voxels above THRESHOLD, read from the MRML node itself."""
    array, geometry = bridge.array_from_volume(node)
    return geometry.index_to_point(np.argwhere(array > THRESHOLD)[:, ::-1].astype(float))


def labelled_points_ras(segmentation, name):
    mask, geometry = bridge.segment_mask(segmentation, name)
    return geometry.index_to_point(np.argwhere(mask)[:, ::-1].astype(float))


def same_points(a, b):
    key = lambda p: np.round(p, 3).tolist()  # noqa: E731
    return sorted(map(tuple, key(a))) == sorted(map(tuple, key(b)))


def test_torchscript_model_labels_land_on_the_right_ras_voxels(scene, head_node, tmp_path):
    direction = bridge.volume_geometry(head_node).direction
    assert not np.allclose(direction, np.eye(3))
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(threshold_net()), str(model))
    card = {
        "name": "bright",
        "roi_size": [16, 16, 16],
        "labels": [
            {
                "value": 1,
                "name": "bright tissue",
                "color": [0.1, 0.8, 0.3],
                "terminology": "SCT^85756007^Tissue~SCT^85756007^Tissue~^^~^^~^^",
            }
        ],
    }
    (tmp_path / "net.ts.json").write_text(json.dumps(card))
    before = bridge.array_from_volume(head_node)[0]
    logic = MedAISegLogic(scene)
    seg = logic.segment_with_model([head_node], model, device="cpu", return_entropy=True)
    assert seg.GetName() == "anatomical segmentation"
    assert same_points(labelled_points_ras(seg, "bright tissue"), bright_points_ras(head_node))
    segment = seg.GetSegmentation().GetNthSegment(0)
    np.testing.assert_allclose(segment.GetColor(), (0.1, 0.8, 0.3), atol=1e-6)
    assert bridge.segment_infos(seg)[0].terminology.startswith("SCT^85756007")
    assert bridge.reference_geometry(seg).same_grid(bridge.volume_geometry(head_node), tol_mm=1e-3)
    assert logic.last_result.extra_nodes == ["anatomical uncertainty"]
    np.testing.assert_array_equal(bridge.array_from_volume(head_node)[0], before)
    # running again into the same node updates it
    again = logic.segment_with_model([head_node], model, device="cpu", output_node=seg)
    assert again is seg
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1


def test_bundle_labels_land_on_the_right_ras_voxels(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    seg = MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu", trust_bundle=True)
    assert same_points(labelled_points_ras(seg, "bright tissue"), bright_points_ras(head_node))


def test_evaluate_table_and_lesion_table(scene, shared_data):
    folder = shared_data / "segmentation/totalsegmentator"
    names = {1: "spleen", 5: "liver", 52: "aorta"}
    reference = bridge.load_segmentation(scene, folder / "example_seg.nii.gz", segment_names=names)
    prediction = bridge.load_segmentation(scene, folder / "example_seg_fast.nii.gz", segment_names=names)
    logic = MedAISegLogic(scene)
    table = logic.evaluate(reference, prediction)
    columns = bridge.columns_from_table(table)
    row = columns["segment"].index("liver")
    assert columns["matched"][row] == "liver"
    assert 0.85 < columns["dice"][row] <= 1.0
    assert columns["hd95_mm"][row] >= 0
    ct = bridge.load_volume(scene, folder / "example_ct_sm.nii.gz")
    markups, lesions = logic.detect_lesions(prediction, intensity_node=ct, segment_name="spleen")
    lesion_columns = bridge.columns_from_table(lesions)
    assert markups.GetNumberOfControlPoints() == len(lesion_columns["lesion"]) >= 1
    assert 20 < lesion_columns["mean_intensity"][0] < 300  # spleen HU


def test_bad_inputs_raise_helpful_errors(scene):
    logic = MedAISegLogic(scene)
    with pytest.raises(ValueError, match="scalar volume"):
        logic.denoise(None, "nlm")
    phantom_node = bridge.create_volume(scene, np.zeros((4, 5, 6), np.float32), Geometry(), "zeros")
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        logic.denoise(phantom_node, "blur")
    with pytest.raises(ValueError, match="not found"):
        logic.segment_with_model([phantom_node], "/nonexistent/model.ts")
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(ValueError, match="seed"):
        logic.region_growing(phantom_node, np.zeros((0, 3)))
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count  # nothing created on failure
