"""Round trips through Slicer's storage nodes: segmentations, markups, models, tables, atomic writes."""

import numpy as np
import pytest
import vtk

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry, rotation_matrix
from MedAICommonLib.synthetic.phantoms import make_ct_phantom


def oblique_phantom():
    return make_ct_phantom(
        shape_kji=(20, 32, 36),
        spacing=(4.0, 3.5, 5.0),
        direction=rotation_matrix("x", 30.0) @ rotation_matrix("y", 30.0),
    )


def test_segmentation_round_trip_keeps_voxels_names_colours(scene, tmp_path):
    phantom = oblique_phantom()
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    segments = [SegmentInfo(v, n, (v / 10.0, 0.5, 1 - v / 10.0)) for v, n in phantom.names.items()]
    segments.append(SegmentInfo(9, "empty structure"))
    node = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, segments, "structures", reference_volume=ct
    )
    path = bridge.save_node(node, tmp_path / "structures.seg.nrrd")
    loaded = bridge.load_segmentation(scene, path)
    labels, geometry, infos = bridge.labelmap_from_segmentation(loaded, reference=phantom.geometry)
    assert [s.name for s in infos] == [s.name for s in segments]
    for expected, got in zip(segments, infos):
        np.testing.assert_allclose(got.color, expected.color_or_default(), atol=1e-6)
    assert abs(infos[4].color[0] - 0.5) < 0.01  # Slicer's reserved 'no colour' grey is kept as grey
    expected = np.zeros_like(labels)
    for order, info in enumerate(segments, start=1):
        expected[phantom.labels == info.label] = order
    np.testing.assert_array_equal(labels, expected)
    assert bridge.reference_geometry(loaded).same_grid(phantom.geometry, 1e-4)


def test_label_map_file_imports_as_segments(scene, tmp_path, shared_data):
    path = shared_data / "segmentation/pyradiomics/prostate_phantom_subvolume-label.nrrd"
    node = bridge.load_segmentation(scene, path, segment_names={1: "prostate"})
    names = [s.name for s in bridge.segment_infos(node)]
    assert names == ["prostate", "7", "8", "9"]
    volume = bridge.load_volume(scene, path, labelmap=True)
    raw, geometry = bridge.array_from_volume(volume)
    mask, mask_geometry = bridge.segment_mask(node, "8", reference=geometry)
    np.testing.assert_array_equal(mask, raw == 8)


def test_markups_round_trip(scene, tmp_path):
    points = np.array([[1.5, -2.0, 3.25], [-40.0, 12.0, 0.5]])
    node = bridge.create_markups(scene, points, "landmarks", labels=["a", "b"])
    for name in ("p.mrk.json", "p.fcsv"):
        loaded = bridge.load_markups(scene, bridge.save_node(node, tmp_path / name))
        np.testing.assert_allclose(bridge.points_from_markups(loaded), points, atol=1e-6)
        assert bridge.point_labels(loaded) == ["a", "b"]


def _slicer_json_storage(scene):
    import slicer

    storage = slicer.vtkMRMLMarkupsJsonStorageNode()  # the Markups module's (not in PythonSlicer)
    scene.AddNode(storage)
    return storage


@pytest.mark.parametrize("class_name", ["vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsCurveNode"])
def test_markups_json_files_are_those_of_slicers_own_storage_node(scene, tmp_path, class_name):
    """MedAI's .mrk.json reader and writer (MRML core only) agree with Slicer's JSON storage node both ways."""
    points = np.array([[1.5, -2.0, 3.25], [-40.0, 12.0, 0.5], [7.0, 8.0, -9.0]])
    node = bridge.create_markups(scene, points, "landmarks", labels=["a", "b", "c"], class_name=class_name)
    node.SetNthControlPointDescription(1, "apex")
    node.SetNthControlPointPositionMissing(2)

    ours = bridge.save_node(node, tmp_path / "ours.mrk.json")
    read_by_slicer = _slicer_json_storage(scene).AddNewMarkupsNodeFromFile(str(ours), "by Slicer")
    storage = _slicer_json_storage(scene)
    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node)
    read_by_medai = bridge.load_markups(scene, tmp_path / "slicer.mrk.json")

    for loaded in (read_by_slicer, read_by_medai):
        assert loaded.GetClassName() == class_name
        np.testing.assert_allclose(bridge.points_from_markups(loaded)[:2], points[:2], atol=1e-9)
        assert bridge.point_labels(loaded) == ["a", "b", "c"]
        assert loaded.GetNthControlPointDescription(1) == "apex"
        assert loaded.GetNthControlPointPositionStatus(2) == node.GetNthControlPointPositionStatus(2)


@pytest.mark.parametrize("extension", [".vtk", ".vtp", ".stl", ".ply"])
def test_model_round_trip_in_ras(scene, tmp_path, extension):
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(10.0, -20.0, 30.0)
    sphere.SetRadius(5.0)
    sphere.Update()
    node = bridge.create_model(scene, sphere.GetOutput(), "sphere")
    loaded = bridge.load_model(scene, bridge.save_node(node, tmp_path / f"s{extension}"))
    points = bridge.points_from_polydata(bridge.polydata_from_model(loaded))
    np.testing.assert_allclose(points.mean(axis=0), (10.0, -20.0, 30.0), atol=1e-3)


def test_table_and_plot(scene, tmp_path):
    table = bridge.create_table(
        scene,
        {"dose": [0.0, 1.0, 2.0], "volume": [100.0, 80.0, 5.0], "name": ["a", "b", "c"]},
        "t",
        units={"dose": "Gy"},
    )
    assert bridge.columns_from_table(table)["volume"] == [100.0, 80.0, 5.0]
    chart = bridge.create_plot_chart(scene, table, "dose", ["volume"], "DVH", "Dose (Gy)", "Volume (%)")
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    bridge.save_node(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[0].replace('"', "") == "dose,volume,name"
    with pytest.raises(bridge.BridgeError, match="same length"):
        bridge.create_table(scene, {"a": [1], "b": [1, 2]}, "bad")


def test_failed_reads_leave_scene_unchanged(scene, tmp_path):
    bad = tmp_path / "corrupt.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01")
    count = scene.GetNumberOfNodes()
    with pytest.raises(bridge.BridgeError, match="corrupt"):
        bridge.load_volume(scene, bad)
    with pytest.raises(bridge.BridgeError, match="not found"):
        bridge.load_volume(scene, tmp_path / "missing.nii.gz")
    assert scene.GetNumberOfNodes() == count


def test_save_is_atomic_and_leaves_no_temporary_files(scene, tmp_path):
    node = bridge.create_volume(scene, np.ones((3, 4, 5), np.int16), Geometry(), "v")
    target = tmp_path / "v.nrrd"
    target.write_text("old content")
    bridge.save_node(node, target)
    assert target.read_bytes().startswith(b"NRRD")
    assert [p.name for p in tmp_path.iterdir()] == ["v.nrrd"]


def test_slicer_util_helpers_work_on_the_headless_scene():
    """The default runtime is installed as slicer.mrmlScene / slicer.modules, so slicer.util works as in Slicer."""
    import slicer
    import slicer.util

    from MedAICommonLib.runtime import get_scene

    scene = get_scene()
    assert slicer.mrmlScene is scene
    phantom = make_ct_phantom(shape_kji=(8, 10, 12))
    volume = bridge.create_volume(scene, phantom.ct, phantom.geometry, "util test CT")
    segmentation = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, [SegmentInfo(1, "body")], "util test seg", reference_volume=volume
    )
    try:
        assert slicer.util.getNode("util test CT") is volume
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), phantom.ct)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
        np.testing.assert_array_equal(mask > 0, phantom.labels == 1)
    finally:
        bridge.remove_nodes(scene, [volume, segmentation])


def test_label_map_export_leaves_no_nodes_behind(scene):
    phantom = make_ct_phantom(shape_kji=(8, 10, 12))
    node = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, [SegmentInfo(v, n) for v, n in phantom.names.items()], "s"
    )
    before = scene.GetNumberOfNodes()
    for _ in range(3):
        bridge.labelmap_from_segmentation(node)
        bridge.segment_mask(node, "liver")
    assert scene.GetNumberOfNodes() == before
