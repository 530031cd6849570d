"""Overlapping segments keep their full masks: shared labelmap layers, written and read through .seg.nrrd.

DICOM-RT structure sets overlap by nature (a GTV inside a CTV inside a PTV inside the body); a label
map would lose all but the last. A segmentation stores each segment in a shared labelmap layer with
its own label value, and needs one more layer only where segments overlap.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.bridge import BridgeError, SegmentInfo
from MedAICommonLib.geometry import Geometry


def oblique_geometry(shape_kji, space="RAS"):
    angle = np.deg2rad(20.0)
    c, s = np.cos(angle), np.sin(angle)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([-1.0, 1.0, 1.0])
    return Geometry((1.2, 0.9, 2.5), (30.0, -12.0, 5.0), direction, space, shape_kji)


def nested_masks(shape=(12, 20, 18)):
    """body > liver > tumour (nested), kidney inside the body beside the liver, and an empty segment."""
    masks = {name: np.zeros(shape, bool) for name in ("body", "liver", "tumour", "kidney", "empty")}
    masks["body"][1:11, 2:18, 2:16] = True
    masks["liver"][3:9, 4:11, 4:12] = True
    masks["tumour"][4:7, 6:9, 6:9] = True
    masks["kidney"][3:8, 13:17, 5:9] = True
    return masks


@pytest.fixture
def masks():
    return nested_masks()


def test_nested_masks_keep_their_full_masks_in_three_layers(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    colors = {"tumour": (1.0, 0.0, 0.0)}
    node = bridge.create_segmentation_from_masks(scene, masks, geometry, "structures", colors=colors)

    segmentation = node.GetSegmentation()
    assert [info.name for info in bridge.segment_infos(node)] == list(masks)
    # body | liver (inside body) | tumour (inside both); kidney fits beside the liver, empty with the body
    assert segmentation.GetNumberOfLayers() == 3
    layer = {
        info.name: segmentation.GetLayerIndex(segmentation.GetNthSegmentID(info.label - 1))
        for info in bridge.segment_infos(node)
    }
    assert layer == {"body": 0, "liver": 1, "tumour": 2, "kidney": 1, "empty": 0}
    assert bridge.segment_infos(node)[2].color == pytest.approx((1.0, 0.0, 0.0))

    read, read_geometry = bridge.segment_masks(node)
    assert list(read) == list(masks)
    assert read_geometry.same_grid(geometry)
    for name, mask in masks.items():
        np.testing.assert_array_equal(read[name], mask, err_msg=name)
    assert read["body"].sum() == masks["body"].sum() == 10 * 16 * 14  # the liver did not punch a hole


def test_round_trip_through_a_seg_nrrd_file_keeps_overlaps(scene, masks, tmp_path):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(scene, masks, geometry, "structures")
    path = bridge.save_node(node, tmp_path / "structures.seg.nrrd")

    loaded = bridge.load_segmentation(scene, path)
    assert loaded.GetSegmentation().GetNumberOfLayers() == 3
    read, read_geometry = bridge.segment_masks(loaded)
    assert list(read) == list(masks)
    assert read_geometry.same_grid(geometry)
    for name, mask in masks.items():
        np.testing.assert_array_equal(read[name], mask, err_msg=name)
    assert read["empty"].dtype == bool
    assert not read["empty"].any()


def test_masks_on_a_reference_grid_are_nearest_neighbour_resampled(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(scene, masks, geometry, "structures")

    # a crop of the same lattice (first voxel at index (2, 3, 1)): an exact sub-array
    crop = Geometry(geometry.spacing, tuple(geometry.index_to_point([1, 3, 2])), geometry.direction, "RAS", (8, 14, 15))
    cropped, _ = bridge.segment_masks(node, crop, ["tumour", "liver"])
    assert list(cropped) == ["liver", "tumour"]  # segment order, not the order asked
    np.testing.assert_array_equal(cropped["liver"], masks["liver"][2:10, 3:17, 1:16])

    # a coarser grid in LPS: what SimpleITK's nearest-neighbour resampling gives, mask by mask
    coarse = Geometry((2.0, 2.0, 3.0), (-28.0, 8.0, 6.0), np.eye(3), "LPS", (9, 14, 14))
    resampled, resampled_geometry = bridge.segment_masks(node, coarse)
    assert resampled_geometry is coarse
    for name, mask in masks.items():
        expected = bridge.resample_array(mask.astype(np.uint8), geometry, coarse, interpolator=sitk.sitkNearestNeighbor)
        np.testing.assert_array_equal(resampled[name], expected > 0, err_msg=name)
    assert resampled["tumour"].any()
    assert resampled["body"].sum() > resampled["liver"].sum()


def test_label_map_export_lets_later_segments_win(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(scene, masks, geometry, "structures")
    labels, _, infos = bridge.labelmap_from_segmentation(node)
    assert [i.label for i in infos] == [1, 2, 3, 4, 5]
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}  # the empty segment marks nothing
    np.testing.assert_array_equal(labels == 3, masks["tumour"])
    np.testing.assert_array_equal(labels == 2, masks["liver"] & ~masks["tumour"])


def test_label_map_segments_share_one_layer_and_keep_their_values(scene):
    labels = np.zeros((6, 7, 8), np.uint16)
    labels[1:3, 1:4, 1:5] = 4
    labels[3:5, 2:6, 2:7] = 9
    labels[0, 0, 0] = 7  # a value no segment claims is dropped
    segments = [
        SegmentInfo(4, "lung", terminology="Segmentation category and type - x~y^z"),
        SegmentInfo(9, "heart"),
        SegmentInfo(12, "empty"),
    ]
    geometry = oblique_geometry(labels.shape, space="LPS")
    node = bridge.create_segmentation(scene, labels, geometry, segments, "lungs")
    assert node.GetSegmentation().GetNumberOfLayers() == 1
    assert [info.terminology for info in bridge.segment_infos(node)][0].startswith("Segmentation category")
    read, read_geometry = bridge.segment_masks(node)
    assert read_geometry.same_grid(geometry.to_space("RAS"))
    np.testing.assert_array_equal(read["lung"], labels == 4)
    np.testing.assert_array_equal(read["heart"], labels == 9)
    assert not read["empty"].any()


def test_updating_a_node_replaces_its_segments_and_sets_the_reference_volume(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    volume = bridge.create_volume(scene, np.zeros(masks["body"].shape, np.int16), geometry, "CT")
    node = bridge.create_segmentation_from_masks(scene, masks, geometry, "structures")
    count = scene.GetNumberOfNodes()
    again = bridge.create_segmentation_from_masks(
        scene, {"liver": masks["liver"]}, geometry, "ignored", node=node, reference_volume=volume
    )
    assert again is node
    assert scene.GetNumberOfNodes() == count
    assert [i.name for i in bridge.segment_infos(node)] == ["liver"]
    assert bridge.reference_geometry(node).same_grid(bridge.volume_geometry(volume))


def test_bad_masks_are_refused_with_what_to_fix(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    with pytest.raises(BridgeError, match="'short'.*shape"):
        bridge.create_segmentation_from_masks(
            scene, {"body": masks["body"], "short": masks["body"][:-1]}, geometry, "s"
        )
    with pytest.raises(BridgeError, match="'counts'.*0 and 1"):
        bridge.create_segmentation_from_masks(scene, {"counts": masks["body"].astype(np.uint8) * 3}, geometry, "s")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_without_a_reference_geometry_the_grid_is_the_union_of_all_segments(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(
        scene, {"liver": masks["liver"], "kidney": masks["kidney"]}, geometry, "structures"
    )
    node.GetSegmentation().SetConversionParameter("Reference image geometry", "")
    both, union = bridge.segment_masks(node)
    kidney_only, grid = bridge.segment_masks(node, segment_names=["kidney"])
    assert grid.same_grid(union)  # one grid for the node, whichever segments are read
    assert union.shape_kji == (6, 13, 8)  # k 3..8, j 4..16, i 4..11: both boxes and nothing more
    np.testing.assert_array_equal(kidney_only["kidney"], both["kidney"])
    assert both["liver"].sum() == masks["liver"].sum()
    assert both["kidney"].sum() == masks["kidney"].sum()


def test_masks_follow_a_linear_parent_transform_into_world_coordinates(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(scene, {"tumour": masks["tumour"]}, geometry, "structures")
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -5.0, 2.5)
    node.SetAndObserveTransformNodeID(bridge.create_linear_transform(scene, shift, "shift").GetID())
    read, world = bridge.segment_masks(node)
    np.testing.assert_allclose(np.array(world.origin) - np.array(geometry.origin), (10.0, -5.0, 2.5), atol=1e-9)
    np.testing.assert_array_equal(read["tumour"], masks["tumour"])


def test_a_closed_surface_segmentation_is_read_without_changing_the_node(scene, masks):
    geometry = oblique_geometry(masks["body"].shape)
    node = bridge.create_segmentation_from_masks(scene, {"liver": masks["liver"]}, geometry, "surfaces")
    segmentation = node.GetSegmentation()
    assert segmentation.CreateRepresentation("Closed surface")  # the converter rules the runtime registered
    segmentation.SetSourceRepresentationName("Closed surface")
    segmentation.RemoveRepresentation("Binary labelmap")
    read, grid = bridge.segment_masks(node)
    assert grid.same_grid(geometry)
    overlap = (read["liver"] & masks["liver"]).sum()
    assert 2 * overlap / (read["liver"].sum() + masks["liver"].sum()) > 0.9
    assert not segmentation.ContainsRepresentation("Binary labelmap")  # the input was not modified
