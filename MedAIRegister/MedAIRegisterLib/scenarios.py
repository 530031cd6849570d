"""Registration scenarios shared by the Slicer self-test and pytest: each builds its data, runs the Logic
and asserts numbers."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import rotation_matrix
from MedAICommonLib.synthetic.phantoms import STRUCTURES, make_ct_phantom

from MedAIRegisterLib.intensity import intensity_registration

from MedAIRegisterLib import quality, simulation
from MedAIRegisterLib.logic import MedAIRegisterLogic


def scenario_volume_rigid_mi(scene) -> dict:
    """Phantom CT vs a rotated, shifted, remapped copy: MI rigid recovers it (TRE < 1 mm) and the propagated
    structures overlap the originals (Dice > 0.9 for the liver)."""
    phantom = make_ct_phantom()
    fixed = bridge.create_volume(scene, phantom.ct.astype(np.float32), phantom.geometry, "scenario fixed CT")
    fixed_image = bridge.volume_to_sitk(fixed)
    moving_image, truth = simulation.moved_copy(fixed_image, (5.0, -3.0, 12.0), (10.0, -12.0, 6.0))
    moving = bridge.sitk_to_volume(moving_image, scene, "scenario moving")
    # Structures drawn on the moving image (the fixed labels carried through the known motion).
    labels = bridge.array_to_sitk(phantom.labels.astype(np.uint16), phantom.geometry)
    moved_labels = sitk.Resample(labels, moving_image, truth.GetInverse(), sitk.sitkNearestNeighbor)
    array, geometry = bridge.sitk_to_array(moved_labels)
    segments = [SegmentInfo(v, n) for v, n in STRUCTURES.items()]
    moving_structures = bridge.create_segmentation(scene, array.astype(np.uint16), geometry, segments, "moving seg")
    logic = MedAIRegisterLogic(scene)
    node = logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", "cpu", resample=True)
    assert node.GetNodeReference("fixed") is fixed
    assert node.GetNodeReference("moving") is moving
    body = bridge.array_to_sitk((phantom.labels > 0).astype(np.uint8), phantom.geometry)
    tre = intensity_registration.target_registration_error(
        logic.last.itk_transform, truth, simulation.grid_points(body, 4, body)
    )
    assert tre.mean() < 1.0, tre.mean()
    assert logic.last.metrics["mi_after"] > logic.last.metrics["mi_before"]
    carried = logic.carry_through(moving_structures, node, fixed)
    liver, _ = bridge.segment_mask(carried, "liver", phantom.geometry)
    score = quality.dice(liver, phantom.labels == 5)
    assert score > 0.9, score
    return {"tre_mean_mm": float(tre.mean()), "liver_dice": score}


def scenario_landmarks_rigid(scene) -> dict:
    """Markups moved by a known rigid transform plus 0.5 mm noise: rigid fit FRE ~ noise, transform recovered."""
    rng = np.random.default_rng(1)
    fixed_points = rng.uniform(-80, 80, (10, 3))
    rotation = rotation_matrix("z", 20.0) @ rotation_matrix("x", -10.0)
    moving_points = (fixed_points - [5.0, 10.0, -15.0]) @ rotation + rng.normal(0, 0.5, (10, 3))
    fixed = bridge.create_markups(scene, fixed_points, "F")
    moving = bridge.create_markups(scene, moving_points, "M")
    logic = MedAIRegisterLogic(scene)
    node = logic.register_landmarks(fixed, moving, "rigid")
    moving.SetAndObserveTransformNodeID(node.GetID())
    world = bridge.points_from_markups(moving, world=True)
    assert np.abs(world - fixed_points).max() < 3.0
    assert 0.2 < logic.last.metrics["fre_rms_mm"] < 1.0
    return {"fre_rms_mm": logic.last.metrics["fre_rms_mm"]}


def scenario_icp_markups_to_model(scene) -> dict:
    """A sparse markups 'surface trace' of the phantom liver ICP-registered onto the liver's surface points."""
    phantom = make_ct_phantom()
    segments = [SegmentInfo(v, n) for v, n in STRUCTURES.items()]
    seg = bridge.create_segmentation(scene, phantom.labels, phantom.geometry, segments, "phantom")
    logic = MedAIRegisterLogic(scene)
    surface = logic.surface_points((seg, "liver"))
    rng = np.random.default_rng(2)
    picked = surface[rng.choice(len(surface), 300, replace=False)]
    rotation = rotation_matrix("y", 12.0)
    moved = (picked - picked.mean(0)) @ rotation.T + picked.mean(0) + [6.0, -4.0, 3.0]
    markups = bridge.create_markups(scene, moved, "trace")
    node = logic.register_surfaces((seg, "liver"), markups, "point-to-plane", "rigid", trim_fraction=0.95)
    matrix = bridge.matrix_from_transform_node(node)
    error = np.linalg.norm(moved @ matrix[:3, :3].T + matrix[:3, 3] - picked, axis=1)
    assert error.mean() < 1.5, error.mean()
    return {"mean_error_mm": float(error.mean()), "rms_mm": logic.last.metrics["rms_mm"]}


def scenario_volume_bspline_torch(scene) -> dict:
    """Textured phantom CT vs a smoothly deformed (6 mm) and moved copy: the torch B-spline (after affine MI)
    aligns it better than rigid MI — higher NCC and less than half the error against the known map in the body.
    (Smooth random 'tissue texture' is added: the bare phantom's flat interiors carry no information for any
    deformable method.)"""
    phantom = make_ct_phantom(shape_kji=(32, 64, 64), spacing=(4.0, 4.0, 5.0))
    body = phantom.labels > 0
    texture = gaussian_filter(np.random.default_rng(0).normal(size=phantom.ct.shape), 1.5)
    ct = phantom.ct + 150.0 * texture / texture.std() * body
    fixed = bridge.create_volume(scene, ct.astype(np.float32), phantom.geometry, "scenario textured CT")
    fixed_image = bridge.volume_to_sitk(fixed)
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed_image.GetSize()])
    deformation = simulation.SmoothDeformation(centre, amplitude_mm=6.0, wavelength_mm=120.0)
    moving_image, truth = simulation.deformed_copy(fixed_image, deformation)
    moving = bridge.sitk_to_volume(moving_image, scene, "scenario deformed")
    points = bridge.sitk_to_array(fixed_image)[1].index_to_point(np.argwhere(body)[::7, ::-1].astype(float))
    expected = truth(points)
    logic = MedAIRegisterLogic(scene)
    scores = {}
    for kind in ("rigid", "bspline"):
        node = logic.register_volumes(fixed, moving, kind, "ct-mr-head", "torch-cpu" if kind == "bspline" else "cpu")
        scores[f"ncc_{kind}"] = logic.last.metrics["ncc_after"]
        mapped = np.array([logic.last.itk_transform.TransformPoint(tuple(map(float, p))) for p in points])
        scores[f"error_{kind}_mm"] = float(np.linalg.norm(mapped - expected, axis=1).mean())
    assert not node.IsLinear()
    assert scores["ncc_bspline"] > scores["ncc_rigid"], scores
    assert scores["error_bspline_mm"] < 0.5 * scores["error_rigid_mm"], scores
    return scores
