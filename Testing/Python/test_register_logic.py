"""Logic scenarios (shared with the Slicer self-test), devices, B-spline output and quality metrics."""

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIRegisterLib import quality, scenarios, simulation
from MedAIRegisterLib.logic import MedAIRegisterLogic


def test_scenario_volume_rigid_mi(scene):
    result = scenarios.scenario_volume_rigid_mi(scene)
    assert result["tre_mean_mm"] < 1.0


def test_scenario_landmarks_rigid(scene):
    scenarios.scenario_landmarks_rigid(scene)


def test_scenario_icp_markups_to_model(scene):
    scenarios.scenario_icp_markups_to_model(scene)


def test_scenario_volume_bspline_torch(scene):
    result = scenarios.scenario_volume_bspline_torch(scene)
    assert result["error_bspline_mm"] < result["error_rigid_mm"]


def _pair(scene):
    phantom = make_ct_phantom()
    fixed = bridge.create_volume(scene, phantom.ct.astype(np.float32), phantom.geometry, "F")
    moving_image, truth = simulation.moved_copy(bridge.volume_to_sitk(fixed), (4.0, 0.0, 8.0), (6.0, -5.0, 4.0))
    return fixed, bridge.sitk_to_volume(moving_image, scene, "M"), truth


def test_torch_cpu_path_through_logic_updates_given_nodes(scene):
    fixed, moving, truth = _pair(scene)
    existing = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "mine")
    before = scene.GetNumberOfNodes()
    logic = MedAIRegisterLogic(scene)
    node = logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", "torch-cpu", output_transform_node=existing)
    assert node is existing
    assert scene.GetNumberOfNodes() == before  # no new nodes: the given one was updated
    assert logic.last.backend == "torch"
    assert logic.last.metrics["ncc_after"] > logic.last.metrics["ncc_before"]


@pytest.mark.slow
def test_bspline_gives_a_deformable_transform_node(scene):
    fixed, moving, _ = _pair(scene)
    logic = MedAIRegisterLogic(scene)
    node = logic.register_volumes(fixed, moving, "bspline", "ct-mr-head", "simpleitk")
    assert logic.last.backend == "simpleitk"
    assert not node.IsLinear()
    assert logic.last.metrics["mi_after"] > logic.last.metrics["mi_before"]


def test_bad_inputs_raise_value_errors(scene):
    fixed, _, _ = _pair(scene)
    logic = MedAIRegisterLogic(scene)
    with pytest.raises(ValueError, match="moving volume"):
        logic.register_volumes(fixed, None)
    with pytest.raises(ValueError, match="preset"):
        logic.register_volumes(fixed, fixed, preset="xx")


def test_quality_metrics_behave():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 20, 20))
    assert quality.normalized_cross_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert quality.mutual_information(a, -a) > quality.mutual_information(a, rng.normal(size=a.shape))
    assert quality.dice(a > 0, a > 0) == 1.0
    board = quality.checkerboard(np.zeros((8, 8, 8)), np.ones((8, 8, 8)), squares=2)
    assert board.mean() == pytest.approx(0.5)


def test_initial_transform_node_starts_from_a_given_pose(scene):
    """Started from a pose 2 degrees / 2 mm off the truth, all three paths end within 1 mm of it."""
    from MedAICommonLib.synthetic.phantoms import make_ct_phantom as phantom_ct
    from MedAIRegisterLib.intensity import intensity_registration

    phantom = phantom_ct()
    fixed, moving, truth = _pair(scene)
    near = simulation.rigid_transform((0.0, 0.0, 2.0), (2.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    start = bridge.sitk_to_transform_node(
        bridge.matrix_to_sitk(bridge.sitk_to_matrix(truth) @ bridge.sitk_to_matrix(near)), scene, "start"
    )
    body = bridge.array_to_sitk((phantom.labels > 0).astype(np.uint8), phantom.geometry)
    points = simulation.grid_points(body, 4, body)
    for device in ("cpu", "simpleitk", "torch-cpu"):
        logic = MedAIRegisterLogic(scene)
        logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", device, initial_transform_node=start)
        tre = intensity_registration.target_registration_error(logic.last.itk_transform, truth, points)
        assert tre.mean() < 1.0, device


def test_dose_volume_carried_through_transform_keeps_attributes_and_moves_peak(scene):
    """A dose blob on the moving grid lands, on the fixed grid, where the transform node puts its centre."""
    from MedAICommonLib.geometry import Geometry, lps_to_ras_points, ras_to_lps_points

    geometry = Geometry((4.0, 4.0, 4.0), (-60.0, -60.0, -40.0), np.eye(3), "RAS", (21, 31, 31))
    centre_ras = np.array([10.0, -8.0, 4.0])
    points = geometry.index_to_point(
        np.stack(np.meshgrid(*[np.arange(n) for n in (31, 31, 21)], indexing="ij"), -1).reshape(-1, 3)
    )
    dose = np.exp(-np.sum((points - centre_ras) ** 2, axis=1) / (2 * 10.0**2)).reshape(31, 31, 21).transpose(2, 1, 0)
    fixed = bridge.create_volume(scene, np.zeros((21, 31, 31), np.float32), geometry, "fixed")
    moving_dose = bridge.create_volume(scene, (60.0 * dose).astype(np.float32), geometry, "dose")
    moving_dose.SetAttribute("DicomRtImport.DoseVolume", "1")
    itk = simulation.rigid_transform((0.0, 0.0, 10.0), (6.0, -4.0, 2.0), (0.0, 0.0, 0.0))
    node = bridge.sitk_to_transform_node(itk, scene, "T")
    carried = MedAIRegisterLogic(scene).carry_through(moving_dose, node, fixed)
    assert carried.GetAttribute("DicomRtImport.DoseVolume") == "1"
    array, carried_geometry = bridge.array_from_volume(carried)
    peak = carried_geometry.index_to_point(np.array(np.unravel_index(np.argmax(array), array.shape))[::-1])
    expected = lps_to_ras_points(itk.GetInverse().TransformPoint(tuple(ras_to_lps_points(centre_ras))))
    assert np.linalg.norm(peak - expected) <= 4.0 * np.sqrt(3)  # within one voxel diagonal
    assert array.max() == pytest.approx(60.0, rel=0.1)
