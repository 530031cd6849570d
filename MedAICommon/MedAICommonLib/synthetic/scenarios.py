"""Scenarios of the common layer, shared by pytest and the MedAICommon Slicer self-test.

Each ``scenario_<name>(scene)`` builds its data (generated; no files shipped, no downloads), runs the
common layer (geometry conventions, the MRML bridge, storage nodes, the worker) and raises
``AssertionError`` when a number is off. They need only what Slicer bundles (numpy, SimpleITK, VTK).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import bridge
from ..bridge.segmentations import SegmentInfo
from ..geometry import Geometry, rotation_matrix
from .phantoms import STRUCTURES, make_ct_phantom
from ..runtime import in_slicer_application
from ..application.self_test import ScenarioSkipped


def _oblique_geometry(shape_kji=(12, 20, 24)) -> Geometry:
    direction = rotation_matrix("z", 30.0) @ rotation_matrix("x", -15.0)
    return Geometry((0.8, 1.2, 2.5), (-10.0, 25.0, -40.0), direction, "RAS", shape_kji)


def scenario_geometry_ras_lps_and_index_round_trip(scene) -> dict:
    """RAS and LPS name the same voxel (x and y flip sign, z stays); index -> point -> index is exact."""
    geometry = _oblique_geometry()
    lps = geometry.to_space("LPS")
    ijk = np.array([[0, 0, 0], [23, 19, 11], [4.5, 7.25, 3.0]])
    ras_points, lps_points = geometry.index_to_point(ijk), lps.index_to_point(ijk)
    np.testing.assert_allclose(lps_points, ras_points * [-1.0, -1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(geometry.point_to_index(ras_points), ijk, atol=1e-9)
    assert lps.to_space("RAS").same_grid(geometry)
    step = np.linalg.norm(geometry.index_to_point([0, 0, 1]) - geometry.index_to_point([0, 0, 0]))
    assert abs(step - 2.5) < 1e-9, step  # k steps by the slice spacing, whatever the direction
    return {"max_error_mm": float(np.abs(geometry.point_to_index(ras_points) - ijk).max())}


def scenario_volume_and_segmentation_round_trip_through_files(scene) -> dict:
    """An oblique volume and its segmentation written by Slicer's storage nodes and read back keep every voxel
    value, the grid (RAS) and each segment's voxels."""
    phantom = make_ct_phantom(shape_kji=(16, 32, 32), spacing=(4.0, 4.0, 5.0), direction=rotation_matrix("z", 20.0))
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "round-trip CT")
    segments = [SegmentInfo(v, n) for v, n in STRUCTURES.items()]
    seg = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, segments, "round-trip structures", reference_volume=ct
    )
    folder = Path(tempfile.mkdtemp(prefix="medai-selftest-"))
    try:
        ct2 = bridge.load_volume(scene, bridge.save_node(ct, folder / "ct.nrrd"))
        seg2 = bridge.load_segmentation(scene, bridge.save_node(seg, folder / "structures.seg.nrrd"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    values, geometry = bridge.array_from_volume(ct2)
    assert geometry.same_grid(phantom.geometry), geometry
    assert np.array_equal(values, phantom.ct)
    voxels = {}
    for value, name in STRUCTURES.items():
        mask, _ = bridge.segment_mask(seg2, name, phantom.geometry)
        voxels[name] = int(mask.sum())
        assert voxels[name] == int((phantom.labels == value).sum()), (name, voxels[name])
    assert voxels["body"] > 0
    return voxels


def scenario_worker_converts_a_volume_in_a_separate_process(scene) -> dict:
    """``medai convert`` in a worker process (PythonSlicer inside Slicer) gives back the same voxels and grid
    in a new node named as asked; the input stays as it was."""
    from ..jobs.scene_job import JobOutput, SceneJob

    if in_slicer_application() and shutil.which("PythonSlicer") is None:
        raise ScenarioSkipped("PythonSlicer is not on this Slicer's PATH, so no worker can start")
    geometry = _oblique_geometry()
    array = np.arange(np.prod(geometry.shape_kji), dtype=np.float32).reshape(geometry.shape_kji)
    volume = bridge.create_volume(scene, array, geometry, "worker input")
    job = SceneJob(
        scene,
        ["convert", "{in:volume}", "{out:volume}", "--kind", "volume"],
        {"volume": volume},
        [JobOutput("volume", "converted.nii.gz", "worker output", "volume")],
    )
    output = job.run(timeout=300)["volume"]
    values, out_geometry = bridge.array_from_volume(output)
    assert output is not volume
    assert output.GetName() == "worker output"
    assert out_geometry.same_grid(geometry), out_geometry
    assert np.array_equal(values, array)
    assert np.array_equal(bridge.array_from_volume(volume)[0], array)
    return {"voxels": int(array.size)}
