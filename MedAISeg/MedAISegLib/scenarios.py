"""Scenarios shared by pytest and the Slicer self-test: build phantom data, run the Logic, check numbers.

Each ``scenario_<name>(scene)`` creates its own nodes in ``scene`` (no files, no downloads) and
raises AssertionError when a result is off.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.geometry import rotation_matrix
from MedAICommonLib.synthetic.phantoms import STRUCTURES, make_ct_phantom

from MedAISegLib.logic import MedAISegLogic
from MedAISegLib.results import EvaluationResult, OtsuResult, PostprocessResult


def _phantom_nodes(scene, direction=None, noise_hu=15.0):
    phantom = make_ct_phantom(shape_kji=(24, 56, 56), spacing=(5.0, 5.0, 6.0), direction=direction, noise_hu=noise_hu)
    ct = bridge.create_volume(scene, phantom.ct, phantom.geometry, "phantom CT")
    segments = [SegmentInfo(v, n) for v, n in STRUCTURES.items()]
    truth = bridge.create_segmentation(
        scene, phantom.labels, phantom.geometry, segments, "phantom truth", reference_volume=ct
    )
    return phantom, ct, truth


def scenario_denoise_then_threshold_lungs(scene):
    """NLM halves the noise in soft tissue; thresholding the lungs matches the truth (Dice > 0.95)."""
    phantom, ct, truth = _phantom_nodes(scene, noise_hu=40.0)
    logic = MedAISegLogic(scene)
    before = bridge.array_from_volume(ct)[0]
    denoised = logic.denoise(ct, "nlm", device="cpu", patch_radius=1, search_radius=2)
    after = bridge.array_from_volume(denoised)[0]
    body = phantom.labels == 1
    assert after[body].std() < 0.5 * before[body].std(), (after[body].std(), before[body].std())
    assert np.array_equal(bridge.array_from_volume(ct)[0], before)  # input unchanged
    seg = logic.threshold(denoised, upper=-500, segment_name="air")
    lungs, _, _ = bridge.labelmap_from_segmentation(seg)
    mask = (lungs > 0) & (phantom.labels > 0)
    truth_lungs = np.isin(phantom.labels, (2, 3))
    dice = 2 * (mask & truth_lungs).sum() / (mask.sum() + truth_lungs.sum())
    assert dice > 0.95, dice


def scenario_region_growing_finds_the_lesion_on_an_oblique_grid(scene):
    """Seeded at the lesion's RAS centre on a rotated grid, region growing recovers the lesion; lesion
    detection puts its centroid within 2 mm of the truth."""
    phantom, ct, truth = _phantom_nodes(scene, direction=rotation_matrix("z", 25.0), noise_hu=5.0)
    logic = MedAISegLogic(scene)
    seed = bridge.create_markups(scene, phantom.lesion_center_ras[None], "seed")
    seg = logic.region_growing(ct, seed, "connected", lower=90, upper=140, segment_name="lesion")
    table = logic.evaluate(truth, seg)
    metrics = logic.last_result_as(EvaluationResult).metrics["lesion"]
    assert metrics["dice"] > 0.9, metrics
    assert metrics["hd95_mm"] <= 6.0, metrics
    assert bridge.columns_from_table(table)["segment"][-1] == "lesion"
    markups, lesion_table = logic.detect_lesions(seg, intensity_node=ct)
    points = bridge.points_from_markups(markups)
    assert len(points) == 1
    assert np.linalg.norm(points[0] - phantom.lesion_center_ras) < 2.0
    volume = bridge.columns_from_table(lesion_table)["volume_mm3"][0]
    assert abs(volume - 4 / 3 * np.pi * 12**3) < 0.3 * 4 / 3 * np.pi * 12**3


def scenario_otsu_and_postprocess(scene):
    """Otsu separates air from tissue; keeping the largest component of 'foreground' drops islands."""
    phantom, ct, _ = _phantom_nodes(scene)
    logic = MedAISegLogic(scene)
    seg = logic.otsu(ct)
    assert -900 < logic.last_result_as(OtsuResult).thresholds[0] < 0
    cleaned = logic.postprocess(seg, keep_largest=True, fill_holes=True)
    before = logic.last_result_as(PostprocessResult).voxels_before["foreground"]
    after = logic.last_result_as(PostprocessResult).voxels_after["foreground"]
    assert after >= before * 0.9
    labels, _, infos = bridge.labelmap_from_segmentation(cleaned)
    assert [i.name for i in infos] == ["foreground"]
    assert (labels > 0)[phantom.labels == 4].mean() > 0.99  # spine inside the body
