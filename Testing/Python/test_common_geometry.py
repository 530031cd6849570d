"""Geometry conventions: RAS/LPS, IJK-to-physical, oblique directions, anisotropic spacing."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry, lps_to_ras_points, rotation_matrix

OBLIQUE = rotation_matrix("x", 30.0) @ rotation_matrix("z", 30.0)
SPACING = (0.7, 1.3, 2.9)
ORIGIN_RAS = (-31.2, 17.5, 42.25)
SHAPE = (7, 9, 11)  # k, j, i


def oblique_geometry():
    return Geometry(SPACING, ORIGIN_RAS, OBLIQUE, "RAS", SHAPE)


def sample_indices(shape_kji):
    """Corners and an interior voxel, as (i, j, k)."""
    k, j, i = (s - 1 for s in shape_kji)
    return np.array([[0, 0, 0], [i, 0, 0], [0, j, 0], [0, 0, k], [i, j, k], [i // 2, j // 3, k // 2]])


def test_ras_lps_round_trip_and_sitk_agree():
    geometry = oblique_geometry()
    lps = geometry.to_space("LPS")
    assert lps.to_space("RAS").same_grid(geometry, 1e-9)
    image = sitk.Image([SHAPE[2], SHAPE[1], SHAPE[0]], sitk.sitkFloat32)
    geometry.apply_to_sitk(image)
    for ijk in sample_indices(SHAPE):
        expected_lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(geometry.index_to_point(ijk), lps_to_ras_points(expected_lps), atol=1e-9)
    back = Geometry.from_sitk(image).to_space("RAS")
    assert back.same_grid(geometry, 1e-6)
    np.testing.assert_allclose(
        geometry.point_to_index(geometry.index_to_point([1.5, 2.0, 3.25])), [1.5, 2.0, 3.25], atol=1e-9
    )


def test_geometry_rejects_bad_spacing_and_direction():
    with pytest.raises(ValueError, match="spacing"):
        Geometry((1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="orthonormal"):
        Geometry(direction=np.diag([1.0, 2.0, 1.0]))


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz", ".mha"])
def test_oblique_volume_round_trip_through_storage_node(scene, tmp_path, extension):
    """MRML node -> Slicer storage node file -> SimpleITK: same physical voxel positions (1e-5 mm)."""
    geometry = oblique_geometry()
    rng = np.random.default_rng(1)
    array = rng.normal(size=SHAPE).astype(np.float32)
    node = bridge.create_volume(scene, array, geometry, "oblique")
    path = bridge.save_node(node, tmp_path / f"oblique{extension}")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    node_geometry = bridge.volume_geometry(node)
    for ijk in sample_indices(SHAPE):
        lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(node_geometry.index_to_point(ijk), lps_to_ras_points(lps), atol=1e-5)
    reloaded = bridge.load_volume(scene, path)
    assert bridge.volume_geometry(reloaded).same_grid(geometry, 1e-5)


SHARED_VOLUMES = [
    "registration/monai-testing-data/anatomical.nii",  # LAS
    "registration/monai-testing-data/reoriented_anat_moved.nii",  # RAS
    "segmentation/pyradiomics/prostate_phantom_subvolume.nrrd",  # diag(-1,-1,1), anisotropic
    "segmentation/pyradiomics/brain2_image.nrrd",  # diag(1,-1,1), 6.5 mm slices
]


def value_at_ras(array, geometry, ras):
    """Voxel value of a KJI array at a RAS point that must fall on a voxel centre (to 1e-5 mm)."""
    ijk = geometry.point_to_index(ras)
    rounded = np.round(ijk)
    np.testing.assert_allclose(geometry.index_to_point(rounded), ras, atol=1e-5)
    i, j, k = (int(v) for v in rounded)
    return array[k, j, i]


@pytest.mark.parametrize("relative", SHARED_VOLUMES)
def test_shared_files_agree_between_sitk_mrml_and_written_file(scene, shared_data, tmp_path, relative):
    """A voxel's physical position is the same read by SimpleITK, in the MRML node, and in Slicer's written file.

    Slicer's reader may re-index the axes (e.g. flip a LAS file's slices); what must hold is that
    the same physical point carries the same value everywhere.
    """
    path = shared_data / relative
    image = sitk.ReadImage(str(path))
    file_array = sitk.GetArrayFromImage(image)
    node = bridge.load_volume(scene, path)
    array, geometry = bridge.array_from_volume(node)
    written = sitk.ReadImage(str(bridge.save_node(node, tmp_path / "written.nrrd")))
    written_array, written_geometry = bridge.sitk_to_array(written)
    for ijk in sample_indices(file_array.shape):
        i, j, k = (int(v) for v in ijk)
        ras = lps_to_ras_points(np.array(image.TransformIndexToPhysicalPoint([i, j, k])))
        assert value_at_ras(array, geometry, ras) == file_array[k, j, i]
        assert value_at_ras(written_array, written_geometry, ras) == file_array[k, j, i]


def test_world_geometry_includes_linear_parent_transform(scene):
    geometry = oblique_geometry()
    node = bridge.create_volume(scene, np.zeros(SHAPE, np.int16), geometry, "v")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -2.0, 7.5)
    transform = bridge.create_linear_transform(scene, shift, "shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(
        bridge.volume_geometry(node, world=True).origin, np.array(ORIGIN_RAS) + shift[:3, 3], atol=1e-9
    )
    np.testing.assert_allclose(bridge.volume_geometry(node, world=False).origin, ORIGIN_RAS, atol=1e-9)
