"""Transform conventions: SimpleITK (fixed->moving, LPS) <-> transform nodes (to-parent, RAS) <-> files."""

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry, lps_to_ras_points, ras_to_lps_points, rotation_matrix


def rigid_sitk():
    transform = sitk.Euler3DTransform()
    transform.SetCenter((10.0, -20.0, 5.0))
    transform.SetRotation(np.deg2rad(12.0), np.deg2rad(-7.0), np.deg2rad(20.0))
    transform.SetTranslation((4.0, -6.5, 12.0))
    return transform


POINTS_RAS = np.array([[0.0, 0.0, 0.0], [25.0, -13.0, 40.0], [-60.5, 80.25, -12.0]])


def test_markups_under_node_land_where_sitk_maps_them(scene):
    """The aligning node's to-parent is ITK's inverse; its from-parent is ITK's TransformPoint."""
    transform = rigid_sitk()
    node = bridge.sitk_to_transform_node(transform, scene, "T")
    markups = bridge.create_markups(scene, POINTS_RAS, "pts")
    markups.SetAndObserveTransformNodeID(node.GetID())
    inverse = transform.GetInverse()
    from_parent = node.GetTransformFromParent()
    for index, point in enumerate(POINTS_RAS):
        world = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(index, world)
        expected = lps_to_ras_points(inverse.TransformPoint(tuple(ras_to_lps_points(point))))
        np.testing.assert_allclose(world, expected, atol=1e-4)
        forward = lps_to_ras_points(transform.TransformPoint(tuple(ras_to_lps_points(point))))
        np.testing.assert_allclose(from_parent.TransformPoint(point.tolist()), forward, atol=1e-4)
    np.testing.assert_allclose(
        bridge.points_from_markups(markups, world=True),
        [lps_to_ras_points(inverse.TransformPoint(tuple(ras_to_lps_points(p)))) for p in POINTS_RAS],
        atol=1e-4,
    )


def test_transform_file_holds_itk_transform(scene, tmp_path):
    transform = rigid_sitk()
    node = bridge.sitk_to_transform_node(transform, scene, "T")
    for name in ("t.h5", "t.tfm"):
        path = bridge.save_node(node, tmp_path / name)
        from_file = sitk.ReadTransform(str(path))
        for point in POINTS_RAS:
            np.testing.assert_allclose(
                from_file.TransformPoint(tuple(point)), transform.TransformPoint(tuple(point)), atol=1e-4
            )
        loaded = bridge.load_transform(scene, path)
        np.testing.assert_allclose(
            bridge.matrix_from_transform_node(loaded), bridge.matrix_from_transform_node(node), atol=1e-6
        )
    np.testing.assert_allclose(
        bridge.sitk_to_matrix(bridge.transform_node_to_sitk(node)), bridge.sitk_to_matrix(transform), atol=1e-9
    )


def test_resampling_through_transform_node_matches_sitk(scene):
    """Moving volume placed under the aligning node, resampled on the fixed grid == sitk.Resample."""
    rng = np.random.default_rng(3)
    moving_array = rng.normal(size=(12, 14, 16)).astype(np.float32)
    moving_geometry = Geometry(
        (1.5, 1.1, 2.5),
        (-10.0, 4.0, -8.0),
        rotation_matrix("y", 30.0) @ rotation_matrix("x", 30.0),
        "RAS",
        (12, 14, 16),
    )
    # A smaller fixed grid centred on the moving volume, so most fixed voxels sample it.
    centre = moving_geometry.index_to_point(np.array([15, 13, 11]) / 2.0)
    fixed_direction = rotation_matrix("z", 10.0)
    fixed_origin = centre - fixed_direction @ (np.array([11, 9, 7]) * np.array([1.2, 1.2, 2.0]) / 2.0)
    fixed_geometry = Geometry((1.2, 1.2, 2.0), fixed_origin, fixed_direction, "RAS", (8, 10, 12))
    transform = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, -0.1, 0.15, (2.0, -1.0, 1.5))
    moving_node = bridge.create_volume(scene, moving_array, moving_geometry, "moving")
    node = bridge.sitk_to_transform_node(transform, scene, "T")
    moving_node.SetAndObserveTransformNodeID(node.GetID())
    # Slicer's own hardening, then resampling of the hardened (world) geometry onto the fixed grid.
    logic = slicer.vtkSlicerTransformLogic()
    logic.hardenTransform(moving_node)
    assert moving_node.GetParentTransformNode() is None
    array, world = bridge.array_from_volume(moving_node)
    ours = bridge.resample_array(array, world, fixed_geometry)
    moving_image = bridge.array_to_sitk(moving_array, moving_geometry)
    reference = sitk.Image([12, 10, 8], sitk.sitkFloat32)
    fixed_geometry.apply_to_sitk(reference)
    expected = sitk.GetArrayFromImage(sitk.Resample(moving_image, reference, transform, sitk.sitkLinear, 0.0))
    inside = expected != 0
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-4)


def test_composite_and_identity_transforms_flatten():
    a, b = rigid_sitk(), sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    composite = sitk.CompositeTransform([a, b])
    matrix = bridge.sitk_to_matrix(composite)
    point = (5.0, -4.0, 3.0)
    np.testing.assert_allclose(matrix[:3, :3] @ point + matrix[:3, 3], composite.TransformPoint(point), atol=1e-9)
    np.testing.assert_allclose(bridge.sitk_to_matrix(sitk.Transform(3, sitk.sitkIdentity)), np.eye(4))
    assert isinstance(bridge.vtk_matrix_from_array(np.eye(4)), vtk.vtkMatrix4x4)
