"""Scenarios shared by pytest and the Slicer self-test: build phantoms, run the plan Logic, check numbers.

Each ``scenario_<name>(scene)`` creates its own nodes (no files) and raises AssertionError when a
result is off. They need matRad's photon base data (see :func:`logic.default_machine_path`).
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.evaluation import dose_volume
from MedAIPlanLib.logic import MedAIPlanLogic


def _water_phantom(scene, shape_kji=(16, 40, 40), spacing=(5.0, 5.0, 5.0)):
    """Water cylinder (radius 80 mm, axis S-I) in air, a 30 mm cubic target at the centre, an
    'organ' 20 mm cube 35 mm posterior of the target, and the body (the cylinder)."""
    geo = Geometry(
        spacing=spacing,
        origin=tuple(-(np.array(shape_kji[::-1]) - 1) / 2 * np.array(spacing)),
        space="RAS",
        shape_kji=shape_kji,
    )
    k, j, i = np.indices(shape_kji)
    pts = geo.index_to_point(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*shape_kji, 3)
    r, a, s = pts[..., 0], pts[..., 1], pts[..., 2]
    body = r**2 + a**2 <= 80.0**2
    ct = np.where(body, 0, -1000).astype(np.int16)
    labels = np.where(body, 1, 0).astype(np.uint16)
    target = (np.abs(r) <= 15) & (np.abs(a) <= 15) & (np.abs(s) <= 15)
    organ = (np.abs(r) <= 10) & (np.abs(a + 45) <= 10) & (np.abs(s) <= 10)
    labels[organ] = 3
    labels[target] = 2
    ct_node = bridge.create_volume(scene, ct, geo, "water phantom")
    seg = bridge.create_segmentation(
        scene,
        labels,
        geo,
        [SegmentInfo(1, "body"), SegmentInfo(2, "target"), SegmentInfo(3, "organ")],
        "water structures",
        reference_volume=ct_node,
    )
    return ct_node, seg, geo, labels


def scenario_open_field_depth_dose(scene):
    """One open 6 MV field from anterior: build-up to a maximum at 5-25 mm depth, then a fall-off as
    exp(-mu d) with mu close to matRad's 0.0051/mm, and a dose node marked like SlicerRT's."""
    ct, seg, geo, labels = _water_phantom(scene)
    logic = MedAIPlanLogic(scene)
    dose_node = logic.compute_dose(ct, seg, "target", gantry_angles=[0], bixel_width_mm=5.0)
    assert dose_volume.is_dose_volume(dose_node)
    assert dose_node.GetAttribute("DicomRtImport.DoseUnitName") == "Gy"
    dose, _ = bridge.array_from_volume(dose_node)
    assert dose.shape == labels.shape
    kc, ic = labels.shape[0] // 2, labels.shape[2] // 2
    # gantry 0 irradiates from anterior (+A in RAS = decreasing LPS y); walk from anterior to posterior
    line = dose[kc, :, ic]
    points = geo.index_to_point(
        np.column_stack(
            [np.full(labels.shape[1], ic), np.arange(labels.shape[1]), np.full(labels.shape[1], kc)]
        ).astype(float)
    )
    depth = 80.0 - points[:, 1]  # the surface is at A = +80 mm
    inside = (depth > 0) & (depth < 160)
    d, v = depth[inside], line[inside]
    dmax_depth = d[np.argmax(v)]
    assert 5.0 <= dmax_depth <= 25.0, dmax_depth
    # beyond the build-up the fall-off follows attenuation x inverse square
    sel = (d > 40) & (d < 120)
    slope = np.polyfit(d[sel], np.log(v[sel] * ((1000 - 80 + d[sel]) / 1000) ** 2), 1)[0]
    assert 0.003 < -slope < 0.008, slope
    assert dose[labels == 0].max() == 0.0  # no dose outside the body/structures


def scenario_plan_covers_target_and_spares_organ(scene):
    """A 5-beam plan: D95 of the target >= 95 % of 60 Gy, organ mean dose < 40 % of it."""
    ct, seg, geo, labels = _water_phantom(scene)
    logic = MedAIPlanLogic(scene)
    before = bridge.array_from_volume(ct)[0].copy()
    dose_node = logic.plan(
        ct,
        seg,
        "target",
        60.0,
        fractions=30,
        gantry_angles=[0, 72, 144, 216, 288],
        bixel_width_mm=5.0,
        dose_grid_mm=5.0,
        max_iter=80,
        device="cpu",
    )
    m = logic.last_result.metrics
    assert m["target"]["D95_Gy"] >= 0.95 * 60.0, m["target"]
    assert m["organ"]["Dmean_Gy"] < 0.4 * 60.0, m["organ"]
    assert np.array_equal(bridge.array_from_volume(ct)[0], before)  # input unchanged
    again = logic.plan(
        ct,
        seg,
        "target",
        60.0,
        fractions=30,
        gantry_angles=[0, 120, 240],
        bixel_width_mm=10.0,
        dose_grid_mm=5.0,
        max_iter=40,
        device="cpu",
        output_dose_node=dose_node,
    )
    assert again is dose_node  # the given output node is updated, no new node


def scenario_bad_inputs_raise_clear_errors(scene):
    """Missing target, non-positive prescription and an isocentre outside the CT are ValueErrors."""
    ct, seg, geo, labels = _water_phantom(scene, shape_kji=(8, 20, 20), spacing=(10.0, 10.0, 10.0))
    logic = MedAIPlanLogic(scene)
    volumes_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    for kwargs, text in (
        ({"target": "PTV", "prescription_gy": 60}, "not found"),
        ({"target": "target", "prescription_gy": 0}, "positive"),
        ({"target": "target", "prescription_gy": 60, "isocenter_lps": [500, 0, 0]}, "outside the CT"),
    ):
        message = None
        try:
            logic.plan(ct, seg, gantry_angles=[0], **kwargs)
        except ValueError as error:
            message = str(error)
        assert message is not None, f"no error for {kwargs}"
        assert text in message, message
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes_before  # no dose node on failure


def scenario_memory_budget_refused_or_coarsened(scene):
    """A plan over the memory budget is refused before any node is made; allowed to, it coarsens the dose grid."""
    ct, seg, geo, labels = _water_phantom(scene)
    logic = MedAIPlanLogic(scene)
    fine = logic.estimate_plan_memory(ct, seg, "target", gantry_angles=[0, 120, 240], dose_grid_mm=5.0)
    coarse = logic.estimate_plan_memory(ct, seg, "target", gantry_angles=[0, 120, 240], dose_grid_mm=10.0)
    assert fine["voxel_bixel_pairs"] > 2 * coarse["voxel_bixel_pairs"] > 0, (fine, coarse)
    assert fine["total_GiB"] > coarse["total_GiB"] > 0
    nodes_before = scene.GetNumberOfNodes()
    message = None
    try:
        logic.plan(
            ct,
            seg,
            "target",
            60.0,
            gantry_angles=[0, 120, 240],
            dose_grid_mm=5.0,
            memory_limit_gb=fine["total_GiB"] / 2,
            device="cpu",
        )
    except ValueError as error:
        message = str(error)
    assert message is not None, "an over-budget plan was not refused"
    assert "GiB" in message, message
    assert "coarser dose grid" in message, message
    assert f"{fine['voxel_bixel_pairs']:,}" in message, message
    assert scene.GetNumberOfNodes() == nodes_before  # refused before anything was created
    node = logic.plan(
        ct,
        seg,
        "target",
        60.0,
        gantry_angles=[0, 120, 240],
        dose_grid_mm=5.0,
        max_iter=30,
        memory_limit_gb=(fine["total_GiB"] + coarse["total_GiB"]) / 2,
        auto_dose_grid=True,
        device="cpu",
    )
    assert node is not None
    assert logic.last_result.dose_grid[0] > 5.0, logic.last_result.dose_grid
    assert logic.last_result.memory_estimate is not None
    assert logic.last_result.memory_estimate["total_GiB"] <= (fine["total_GiB"] + coarse["total_GiB"]) / 2
