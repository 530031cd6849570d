"""Classical segmentation, post-processing, lesion detection and evaluation (vs SimpleITK and MONAI)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from MedAICommonLib.geometry import Geometry
from MedAICommonLib.notices import MedAIWarning
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAISegLib.postprocessing import postprocess
from MedAISegLib.postprocessing.evaluation import binary_metrics, evaluate_labelmaps, match_segments
from MedAISegLib.postprocessing.lesions import detect_lesions
from MedAISegLib.postprocessing.threshold import otsu, region_growing, threshold

LABELS = (1, 2, 5, 6, 52)  # spleen, kidney_right, liver, stomach, aorta


@pytest.fixture(scope="module")
def totalseg_pair(shared_data):
    folder = shared_data / "segmentation/totalsegmentator"
    ref = sitk.ReadImage(str(folder / "example_seg.nii.gz"))
    pred = sitk.ReadImage(str(folder / "example_seg_fast.nii.gz"))
    return ref, pred


def test_overlap_matches_simpleitk_label_overlap_filter(totalseg_pair):
    ref, pred = totalseg_pair
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.Cast(pred, sitk.sitkUInt16), sitk.Cast(ref, sitk.sitkUInt16))  # (source, target)
    geometry = Geometry.from_sitk(ref)
    results = evaluate_labelmaps(sitk.GetArrayFromImage(ref), geometry, sitk.GetArrayFromImage(pred), geometry)
    assert len(results) >= 40
    for label in LABELS:
        metrics = results[str(label)]
        assert metrics["dice"] == pytest.approx(f.GetDiceCoefficient(label), abs=1e-9)
        assert metrics["jaccard"] == pytest.approx(f.GetJaccardCoefficient(label), abs=1e-9)
        assert metrics["sensitivity"] == pytest.approx(1 - f.GetFalseNegativeError(label), abs=1e-9)
        vp, vr = metrics["volume_prediction_mm3"], metrics["volume_reference_mm3"]
        assert 2 * (vp - vr) / (vp + vr) == pytest.approx(f.GetVolumeSimilarity(label), abs=1e-9)
        assert metrics["volume_difference_mm3"] == pytest.approx(vp - vr)
    assert 0.8 < np.mean([m["dice"] for m in results.values()]) < 0.95


def test_surface_distances_match_monai(totalseg_pair):
    ref, pred = totalseg_pair
    r, p = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(pred)
    spacing = ref.GetSpacing()
    spacing_kji = spacing[::-1]
    for label in LABELS:
        ours = binary_metrics(p == label, r == label, spacing)
        y_pred = torch.as_tensor(p == label)[None, None]
        y = torch.as_tensor(r == label)[None, None]
        hd = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing_kji).item()
        asd = compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing_kji).item()
        assert ours["hd95_mm"] == pytest.approx(hd, rel=1e-4, abs=1e-4), label
        assert ours["asd_mm"] == pytest.approx(asd, rel=1e-4, abs=1e-4), label


def test_different_grids_are_compared_in_physical_space(totalseg_pair):
    ref, _ = totalseg_pair
    r = sitk.GetArrayFromImage(ref)
    liver = sitk.Cast(ref == 5, sitk.sitkUInt8) * 5
    # The same liver on a flipped, shifted grid with a different direction: identical in physical space.
    flipped = sitk.Flip(liver, [True, False, False])
    geometry_ref = Geometry.from_sitk(ref)
    results = evaluate_labelmaps(
        r * (r == 5),
        geometry_ref,
        sitk.GetArrayFromImage(flipped),
        Geometry.from_sitk(flipped),
        {5: "liver"},
        {5: "Liver"},
    )
    assert results["liver"]["dice"] == pytest.approx(1.0)
    assert results["liver"]["hd95_mm"] == pytest.approx(0.0)
    # and a 2-voxel shift (6 mm) in physical space shows up as such
    shifted = sitk.Image(liver)
    shifted.SetOrigin(tuple(np.array(liver.GetOrigin()) + np.array(liver.GetDirection()).reshape(3, 3)[:, 0] * 6.0))
    moved = evaluate_labelmaps(
        r * (r == 5),
        geometry_ref,
        sitk.GetArrayFromImage(shifted),
        Geometry.from_sitk(shifted),
        {5: "liver"},
        {5: "liver"},
    )
    assert moved["liver"]["hd95_mm"] == pytest.approx(6.0, abs=0.01)
    assert moved["liver"]["dice"] < 0.95


def test_segments_matched_by_name_only():
    """Never by label value or order (issue 14): 'spleen' is not scored against the prediction's 'kidney'."""
    with pytest.warns(MedAIWarning, match="without a prediction of the same name") as caught:
        pairs = match_segments({1: "liver", 2: "spleen", 3: "aorta"}, {7: "Liver", 2: "kidney", 3: "other"})
    assert pairs == [("liver", 1, 7), ("spleen", 2, 0), ("aorta", 3, 0)]
    assert "spleen, aorta" in str(caught[0].message)
    assert "(ignored): kidney, other" in str(caught[0].message)
    with pytest.raises(ValueError, match="the reference has a; the prediction has b"):
        match_segments({1: "a"}, {2: "b"})


def test_threshold_otsu_region_growing_on_phantom():
    phantom = make_ct_phantom(shape_kji=(20, 48, 48), spacing=(6.0, 6.0, 8.0))
    lungs = threshold(phantom.ct, upper=-500) & (phantom.labels > 0)
    truth = np.isin(phantom.labels, (2, 3))
    assert binary_metrics(lungs, truth, phantom.geometry.spacing)["dice"] > 0.97
    labels, thresholds = otsu(phantom.ct, classes=3)
    assert -1000 < thresholds[0] < -100
    image = sitk.GetImageFromArray(phantom.ct)
    phantom.geometry.apply_to_sitk(image)
    seed_kji = np.argwhere(phantom.labels == 3).mean(axis=0).round().astype(int)
    grown = region_growing(image, [seed_kji[::-1]], "connected", lower=-1000, upper=-500)
    right = phantom.labels == 3
    assert binary_metrics(grown, right, phantom.geometry.spacing)["dice"] > 0.97
    conf = region_growing(image, [seed_kji[::-1]], "confidence", multiplier=3.0)
    assert binary_metrics(conf, right, phantom.geometry.spacing)["dice"] > 0.9
    with pytest.raises(ValueError, match="seed"):
        region_growing(image, [[-5, 0, 0]], "connected", lower=0, upper=1)


def test_postprocess_operations():
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[5:15, 5:20, 5:20] = 1
    labels[8:12, 10:14, 10:14] = 0  # hole
    labels[1, 1, 1] = 1  # island
    labels[16:19, 22:28, 22:28] = 2
    spacing = (1.0, 1.0, 2.0)
    out = postprocess.postprocess(labels, spacing, largest_component=True, holes=True, only=[1])
    assert out[10, 12, 12] == 1
    assert out[1, 1, 1] == 0
    assert (out == 2).sum() == (labels == 2).sum()
    out = postprocess.postprocess(labels, spacing, min_island_mm3=3.0)
    assert out[1, 1, 1] == 0
    assert (out == 1).sum() == (labels == 1).sum() - 1
    sm = postprocess.smooth(labels == 1, 2.0, spacing)
    assert abs(int(sm.sum()) - int((labels == 1).sum())) < 0.2 * (labels == 1).sum()


def test_detect_lesions_on_phantom():
    phantom = make_ct_phantom(shape_kji=(30, 64, 64), spacing=(4.0, 4.0, 4.0), lesion_radius_mm=12.0)
    mask = (phantom.labels == 6).astype(np.uint8)
    mask[2:4, 2:4, 2:4] = 1  # a tiny second finding
    lesions = detect_lesions(mask, phantom.geometry, phantom.ct)
    assert len(lesions) == 2
    big = lesions[0]
    np.testing.assert_allclose(big["centroid_ras"], phantom.lesion_center_ras, atol=1e-6)
    np.testing.assert_allclose(big["centroid_ras"], [40.0, -10.0, 5.0], atol=2.0)
    assert big["volume_mm3"] == pytest.approx(4 / 3 * np.pi * 12**3, rel=0.15)
    assert 20.0 <= big["max_diameter_mm"] <= 26.0
    assert big["mean_intensity"] == pytest.approx(110, abs=5)
    assert lesions[1]["volume_mm3"] == pytest.approx(8 * 64)
    assert len(detect_lesions(mask, phantom.geometry, min_volume_mm3=1000)) == 1
    prob = mask.astype(np.float32) * 0.7
    assert len(detect_lesions(prob, phantom.geometry, probability_threshold=0.8)) == 0
