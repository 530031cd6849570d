"""`medai register/icp/landmarks`: the written transform, loaded into MRML as the moving node's parent,
puts the moving data where SimpleITK's resampling with the same transform puts it."""

import json

import numpy as np
import SimpleITK as sitk
import slicer

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import lps_to_ras_points, ras_to_lps_points
from MedAICommonLib.synthetic.phantoms import STRUCTURES, make_ct_phantom
from MedAIRegisterLib import simulation
from MedAIRegisterLib.intensity import intensity_registration
from MedAIRegisterLib.pointsets import landmarks


def _phantom_pair(scene, tmp_path):
    phantom = make_ct_phantom()
    fixed_node = bridge.create_volume(scene, phantom.ct.astype(np.int16), phantom.geometry, "fixed")
    fixed_image = bridge.volume_to_sitk(fixed_node)
    moving_image, truth = simulation.moved_copy(fixed_image, (8.0, -6.0, 14.0), (12.0, -15.0, 8.0))
    moving_node = bridge.sitk_to_volume(moving_image, scene, "moving")
    return (
        bridge.save_node(fixed_node, tmp_path / "fixed.nrrd"),
        bridge.save_node(moving_node, tmp_path / "moving.nrrd"),
        truth,
        phantom,
    )


def test_register_transform_moves_moving_volume_like_sitk_resampling(scene, tmp_path):
    fixed_path, moving_path, truth, phantom = _phantom_pair(scene, tmp_path)
    out, report_path = tmp_path / "T.h5", tmp_path / "report.json"
    assert (
        main(
            [
                "register",
                str(fixed_path),
                str(moving_path),
                "--output-transform",
                str(out),
                "--output-volume",
                str(tmp_path / "R.nrrd"),
                "--preset",
                "ct-mr-head",
                "--report",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["metrics"]["mi_after"] > report["metrics"]["mi_before"]
    itk = sitk.ReadTransform(str(out))
    body = phantom.labels > 0
    points = bridge.array_to_sitk(body.astype(np.uint8), phantom.geometry)
    tre = intensity_registration.target_registration_error(itk, truth, simulation.grid_points(points, 4, points))
    assert tre.mean() < 1.0

    # A fresh scene, as a Slicer user would load the files.
    moving = bridge.load_volume(scene, moving_path, "moving again")
    fixed = bridge.load_volume(scene, fixed_path, "fixed again")
    node = bridge.load_transform(scene, out)
    moving.SetAndObserveTransformNodeID(node.GetID())
    # World position of moving voxels == where ITK's resampling takes them from: q = T(p)  <=>  p = T^-1(q).
    ijk = np.array([[0, 0, 0], [10, 20, 5], [40, 30, 20], [60, 70, 40]], dtype=float)
    local = bridge.volume_geometry(moving, world=False).index_to_point(ijk)
    world = bridge.volume_geometry(moving, world=True).index_to_point(ijk)
    inverse = itk.GetInverse()
    expected = lps_to_ras_points(np.array([inverse.TransformPoint(tuple(ras_to_lps_points(q))) for q in local]))
    np.testing.assert_allclose(world, expected, atol=1e-3)
    # Hardening the transform and resampling on the fixed grid == sitk.Resample(moving, fixed, T).
    slicer.vtkSlicerTransformLogic().hardenTransform(moving)
    hardened, geometry = bridge.array_from_volume(moving)
    fixed_array, fixed_geometry = bridge.array_from_volume(fixed)
    through_mrml = bridge.resample_array(hardened.astype(np.float32), geometry, fixed_geometry)
    through_sitk = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.ReadImage(str(moving_path), sitk.sitkFloat32), bridge.volume_to_sitk(fixed), itk, sitk.sitkLinear, 0.0
        )
    )
    assert np.abs(through_mrml - through_sitk).max() < 1e-2 * np.abs(through_sitk).max()
    resampled = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "R.nrrd")))
    assert resampled.shape == fixed_array.shape


def test_landmarks_command_writes_itk_fixed_to_moving(scene, tmp_path, shared_data):
    folder = shared_data / "registration" / "itkelastix"
    fixed_lps = landmarks.read_elastix_points(folder / "CT_3D_lung_fixed_point_set_corrected.txt")
    moving_lps = landmarks.read_elastix_points(folder / "CT_3D_lung_moving_point_set_corrected.txt")
    paths = []
    for name, points in (("fixed", fixed_lps), ("moving", moving_lps)):
        node = bridge.create_markups(scene, lps_to_ras_points(points), name)
        paths.append(str(bridge.save_node(node, tmp_path / f"{name}.mrk.json")))
    for method in ("rigid", "affine", "tps"):
        out = tmp_path / f"{method}.h5"
        assert (
            main(
                [
                    "landmarks",
                    *paths,
                    "--output-transform",
                    str(out),
                    "--method",
                    method,
                    "--report",
                    str(tmp_path / "r.json"),
                ]
            )
            == 0
        )
        if method == "tps":
            # ITK's ThinPlateSplineKernelTransform is not in SimpleITK's reader: check through Slicer's.
            from_parent = bridge.load_transform(scene, out).GetTransformFromParent()
            mapped = np.array([from_parent.TransformPoint(p.tolist()) for p in lps_to_ras_points(fixed_lps)])
            np.testing.assert_allclose(mapped, lps_to_ras_points(moving_lps), atol=1e-2)
            continue
        itk = sitk.ReadTransform(str(out))
        mapped = np.array([itk.TransformPoint(tuple(p)) for p in fixed_lps])
        # The node maps moving -> fixed (fit in LPS here); the file holds its inverse, fixed -> moving.
        fit = np.linalg.inv(landmarks.fit_landmarks(moving_lps, fixed_lps, method).matrix)
        np.testing.assert_allclose(mapped, fixed_lps @ fit[:3, :3].T + fit[:3, 3], atol=1e-3)
        report = json.loads((tmp_path / "r.json").read_text())
        assert len(report["metrics"]["fre_per_point_mm"]) == 51


def test_icp_command_on_segment_surfaces(scene, tmp_path):
    phantom = make_ct_phantom()
    segments = [SegmentInfo(v, n) for v, n in STRUCTURES.items()]
    fixed = bridge.create_segmentation(scene, phantom.labels, phantom.geometry, segments, "fixed seg")
    labels_image = bridge.array_to_sitk(phantom.labels.astype(np.uint16), phantom.geometry)
    moved_labels, truth = simulation.moved_copy(labels_image, (6.0, 4.0, -10.0), (8.0, 5.0, -6.0), remap=False)
    moved_labels = sitk.Cast(
        sitk.Resample(labels_image, moved_labels, truth.GetInverse(), sitk.sitkNearestNeighbor), sitk.sitkUInt16
    )
    array, geometry = bridge.sitk_to_array(moved_labels)
    moving = bridge.create_segmentation(scene, array, geometry, segments, "moving seg")
    fixed_path = bridge.save_node(fixed, tmp_path / "fixed.seg.nrrd")
    moving_path = bridge.save_node(moving, tmp_path / "moving.seg.nrrd")
    out = tmp_path / "icp.h5"
    assert (
        main(
            [
                "icp",
                f"{fixed_path}:liver",
                f"{moving_path}:liver",
                "--output-transform",
                str(out),
                "--trim",
                "0.95",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    itk = sitk.ReadTransform(str(out))
    liver = bridge.array_to_sitk((phantom.labels == 5).astype(np.uint8), phantom.geometry)
    tre = intensity_registration.target_registration_error(itk, truth, simulation.grid_points(liver, 2, liver))
    assert tre.mean() < 2.0  # 3x3x4 mm voxels, surfaces by marching cubes
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["inlier_fraction"] > 0.8
