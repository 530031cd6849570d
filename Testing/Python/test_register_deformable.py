"""Torch B-spline FFD: ITK-exact transform layout, recovery of a known smooth deformation, and the transform node
moving the moving volume in MRML exactly like the torch warp; masks and per-call progress in the Logic."""

import time

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch
from scipy.spatial.transform import Rotation

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry, lps_to_ras_points, ras_to_lps_points
from MedAICommonLib.progress import CancelledError, Progress
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIRegisterLib import simulation
from MedAIRegisterLib.intensity import torch_bspline
from MedAIRegisterLib.intensity.numba_registration import register_numba
from MedAIRegisterLib.logic import MedAIRegisterLogic


def _dense(grid, geometry, shape, coefficients):
    indices = [np.arange(n) for n in shape[::-1]]
    u = torch_bspline._grid_coordinates(geometry, grid, indices)
    counts = grid.shape_kji[::-1]
    mats = [torch_bspline.axis_matrix(u[a], counts[a], 0, None, torch.float64) for a in range(3)]
    return torch_bspline._separable(mats[2], mats[1], mats[0], torch.as_tensor(coefficients)).numpy()


def test_bspline_layout_matches_itk_and_refinement_is_exact():
    rng = np.random.default_rng(3)
    shape = (12, 17, 15)
    geometry = Geometry(
        (1.5, 2.0, 3.0), (10.0, -20.0, 5.0), Rotation.from_rotvec([0.1, -0.2, 0.3]).as_matrix(), "LPS", shape
    )
    grid = torch_bspline.grid_for_image(geometry, shape, 12.0, 2)
    coefficients = rng.normal(size=grid.shape_kji + (3,))
    linear = np.eye(4)
    linear[:3, :3] = Rotation.from_rotvec([0.2, 0.0, -0.1]).as_matrix()
    linear[:3, 3] = (5.0, -3.0, 2.0)
    result = torch_bspline.BSplineResult(grid, coefficients, linear, 0.0, 0, 0.0, "cpu")
    displacement = _dense(grid, geometry, shape, coefficients)
    bspline, composite = result.bspline_transform(), result.sitk_transform()
    for i, j, k in [(0, 0, 0), (14, 16, 11), (5, 9, 3), (7, 2, 10)]:
        p = geometry.index_to_point(np.array([i, j, k], float))
        np.testing.assert_allclose(np.array(bspline.TransformPoint(tuple(p))) - p, displacement[k, j, i], atol=1e-9)
        expected = linear[:3, :3] @ (p + displacement[k, j, i]) + linear[:3, 3]
        np.testing.assert_allclose(composite.TransformPoint(tuple(p)), expected, atol=1e-9)
    fine = torch_bspline.refine_coefficients(torch.as_tensor(coefficients)).numpy()
    np.testing.assert_allclose(_dense(grid.refined(), geometry, shape, fine), displacement, atol=1e-9)


def _deformed_mr(shared_data):
    image = sitk.Cast(
        sitk.Shrink(
            sitk.ReadImage(str(shared_data / "registration" / "ants-templates" / "ants_ch2.nii.gz")), [3, 3, 3]
        ),
        sitk.sitkFloat32,
    )
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    deformation = simulation.SmoothDeformation(centre, amplitude_mm=6.0, wavelength_mm=120.0)
    moving, truth = simulation.deformed_copy(image, deformation)
    body = image > float(np.percentile(sitk.GetArrayViewFromImage(image), 50))
    return image, moving, truth, simulation.grid_points(image, 3, body)


@pytest.mark.slow  # a B-spline registration to convergence (about 8 s)
def test_torch_bspline_recovers_known_smooth_deformation(shared_data):
    fixed, moving, truth, points = _deformed_mr(shared_data)
    expected = truth(points)
    arrays = (
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
    )

    def error(transform):
        mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in points])
        return np.linalg.norm(mapped - expected, axis=1)

    rigid = register_numba(*arrays, "rigid", bins=32)
    rigid_error = error(rigid.sitk_transform())
    assert rigid_error.mean() > 3.0  # the deformation (6 mm amplitude) is not rigid
    start = time.perf_counter()
    result = torch_bspline.register_bspline(*arrays, rigid.matrix_lps, device="cpu")
    elapsed = time.perf_counter() - start
    deformable_error = error(result.sitk_transform())
    assert deformable_error.mean() <= 0.4 * rigid_error.mean()  # >= 60 % less residual displacement
    assert elapsed < 120.0


def _phantom_pair(scene, deformation_mm=5.0):
    phantom = make_ct_phantom(shape_kji=(32, 64, 64), spacing=(4.0, 4.0, 5.0))
    fixed = bridge.create_volume(scene, phantom.ct.astype(np.float32), phantom.geometry, "F")
    fixed_image = bridge.volume_to_sitk(fixed)
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed_image.GetSize()])
    moving_image, truth = simulation.deformed_copy(fixed_image, simulation.SmoothDeformation(centre, deformation_mm))
    return fixed, bridge.sitk_to_volume(moving_image, scene, "M"), phantom


def test_bspline_node_moves_moving_volume_like_the_torch_warp(scene):
    fixed, moving, _ = _phantom_pair(scene)
    logic = MedAIRegisterLogic(scene)
    stages = []
    node = logic.register_volumes(
        fixed, moving, "bspline", "ct-mr-head", "torch", progress=lambda stage, fraction: stages.append(stage)
    )
    assert logic.last.backend == "torch"
    assert not node.IsLinear()
    assert node.GetNodeReference("moving") is moving
    assert node.GetNodeReference("fixed") is fixed
    assert "deformable" in stages
    assert stages[-1] == "done"
    assert logic.last.metrics["mi_after"] > logic.last.metrics["mi_before"]
    # The torch warp of the moving image onto the fixed grid ...
    fixed_image, moving_image = bridge.volume_to_sitk(fixed), bridge.volume_to_sitk(moving)
    composite = sitk.CompositeTransform(logic.last.itk_transform)
    affine = np.eye(4)
    affine[:3, :3] = np.array(composite.GetNthTransform(0).GetMatrix()).reshape(3, 3)
    affine[:3, 3] = composite.GetNthTransform(0).TransformPoint((0.0, 0.0, 0.0))
    bspline = sitk.BSplineTransform(composite.GetNthTransform(1))
    grid = torch_bspline.BSplineGrid(
        np.array(bspline.GetTransformDomainOrigin()),
        np.array(bspline.GetTransformDomainDirection()).reshape(3, 3),
        np.array(bspline.GetTransformDomainPhysicalDimensions()),
        tuple(bspline.GetTransformDomainMeshSize()),
    )
    parameters = np.array(bspline.GetParameters()).reshape(3, -1)
    coefficients = np.stack([parameters[c].reshape(grid.shape_kji) for c in range(3)], -1)
    result = torch_bspline.BSplineResult(grid, coefficients, affine, 0.0, 0, 0.0, "cpu")
    through_torch = torch_bspline.warp_moving(
        result,
        Geometry.from_sitk(fixed_image),
        sitk.GetArrayFromImage(fixed_image).shape,
        sitk.GetArrayFromImage(moving_image),
        Geometry.from_sitk(moving_image),
    )
    # The node maps fixed RAS points to moving RAS points (from-parent) exactly as the torch map A(p + d(p)) ...
    fixed_lps = Geometry.from_sitk(fixed_image).index_to_point(
        np.array([[0, 0, 0], [20, 30, 10], [40, 25, 20], [63, 63, 31], [10, 50, 5]], float)
    )
    from_parent = node.GetTransformFromParent()
    mapped = np.array([from_parent.TransformPoint(tuple(map(float, p))) for p in lps_to_ras_points(fixed_lps)])
    expected = np.array([composite.TransformPoint(tuple(map(float, p))) for p in fixed_lps])
    np.testing.assert_allclose(ras_to_lps_points(mapped), expected, atol=1e-3)
    # ... and the moving volume placed under the node in MRML, hardened, and resampled on the fixed grid, is the
    # torch-warped image (up to the second interpolation that hardening onto Slicer's own grid adds).
    moving.SetAndObserveTransformNodeID(node.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(moving)
    hardened, geometry = bridge.array_from_volume(moving)
    _, fixed_geometry = bridge.array_from_volume(fixed)
    through_mrml = bridge.resample_array(hardened.astype(np.float32), geometry, fixed_geometry)
    body = make_ct_phantom(shape_kji=(32, 64, 64), spacing=(4.0, 4.0, 5.0)).labels > 0
    difference = np.abs(through_mrml - through_torch)[body]
    scale = np.abs(through_torch[body]).max()
    unregistered = np.abs(
        bridge.resample_array(sitk.GetArrayFromImage(moving_image), Geometry.from_sitk(moving_image), fixed_geometry)
        - through_torch
    )[body]
    assert np.median(difference) < 0.01 * scale
    assert difference.mean() < 0.25 * unregistered.mean()


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_masks_on_medai_paths(scene, device):
    phantom = make_ct_phantom()
    fixed = bridge.create_volume(scene, phantom.ct.astype(np.float32), phantom.geometry, "F")
    labels = bridge.create_volume(scene, (phantom.labels > 0).astype(np.uint8), phantom.geometry, "body", labelmap=True)
    moving_image, truth = simulation.moved_copy(bridge.volume_to_sitk(fixed), (6.0, -4.0, 10.0), (10.0, -8.0, 6.0))
    # An artefact that does not move with the anatomy (a bright bar), masked out on the moving side.
    moving_array = sitk.GetArrayFromImage(moving_image)
    moving_array[:, :8, :] = moving_array.max()
    artefact = sitk.GetImageFromArray(moving_array)
    artefact.CopyInformation(moving_image)
    moving = bridge.sitk_to_volume(artefact, scene, "M")
    keep = np.ones(moving_array.shape, np.uint8)
    keep[:, :10, :] = 0
    moving_mask = bridge.create_volume(scene, keep, bridge.sitk_to_array(moving_image)[1], "keep", labelmap=True)
    logic = MedAIRegisterLogic(scene)
    logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", device, fixed_mask=labels, moving_mask=moving_mask)
    assert logic.last.backend == ("numba" if device == "cpu" else "torch")
    points = simulation.grid_points(bridge.volume_to_sitk(labels), 4, bridge.volume_to_sitk(labels))
    from MedAIRegisterLib.intensity.intensity_registration import target_registration_error

    assert target_registration_error(logic.last.itk_transform, truth, points).mean() < 1.0
    empty = bridge.create_volume(
        scene, np.zeros_like(phantom.labels, np.uint8), phantom.geometry, "none", labelmap=True
    )
    with pytest.raises(ValueError, match="mask is empty"):
        logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", device, fixed_mask=empty)


def test_progress_argument_reports_and_cancels(scene):
    fixed, moving, _ = _phantom_pair(scene, deformation_mm=0.0)
    logic = MedAIRegisterLogic(scene)
    seen = []
    logic.register_volumes(fixed, moving, "rigid", progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert seen[0][0] == "preparing"
    assert seen[-1] == ("done", 1.0)
    assert any(stage == "registering" for stage, _ in seen)
    progress = Progress()
    progress.cancel()
    before = scene.GetNumberOfNodes()
    with pytest.raises(CancelledError):
        logic.register_volumes(fixed, moving, "rigid", progress=progress)
    assert scene.GetNumberOfNodes() == before
    # The constructor's Progress (attribute) still works when no argument is given.
    logic.progress = Progress(lambda stage, fraction: seen.append(("attr", stage)))
    logic.register_landmarks(*_markups(scene))
    assert ("attr", "done") in seen


def _markups(scene):
    points = np.array([[0, 0, 0], [50, 0, 0], [0, 60, 0], [0, 0, 40], [30, 30, 30]], float)
    nodes = []
    for name, offset in (("fixed", 0.0), ("moving", 5.0)):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        for p in points + offset:
            node.AddControlPoint(*p)
        nodes.append(node)
    return nodes


def test_register_command_bspline_on_torch_writes_an_itk_bspline_file(scene, tmp_path):
    import json

    from MedAICommonLib.cli.main import main

    fixed, moving, _ = _phantom_pair(scene)
    fixed_path = bridge.save_node(fixed, tmp_path / "fixed.nrrd")
    moving_path = bridge.save_node(moving, tmp_path / "moving.nrrd")
    out, report_path = tmp_path / "T.h5", tmp_path / "report.json"
    assert (
        main(
            [
                "register",
                str(fixed_path),
                str(moving_path),
                "--output-transform",
                str(out),
                "--transform",
                "bspline",
                "--device",
                "torch",
                "--preset",
                "ct-mr-head",
                "--report",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["device"].startswith("torch")
    assert report["metrics"]["mi_after"] > report["metrics"]["mi_before"]
    transform = sitk.CompositeTransform(sitk.ReadTransform(str(out)))
    names = [transform.GetNthTransform(i).GetName() for i in range(transform.GetNumberOfTransforms())]
    assert "BSplineTransform" in names
