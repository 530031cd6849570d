"""Registration presets on real volumes: the preset is chosen from the images when none is given, every
preset improves MI and NCC on the MONAI head pair, results are self-consistent (forward then inverse
registration compose to identity, in mm) and a result worse than the start is never returned."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.notices import MedAIWarning
from MedAIRegisterLib import simulation
from MedAIRegisterLib.intensity import intensity_registration
from MedAIRegisterLib.intensity.intensity_backends import keep_better_than_start
from MedAIRegisterLib.intensity.preset_choice import choose_preset, image_modality
from MedAIRegisterLib.logic import MedAIRegisterLogic


def monai_pair(shared_data):
    """The MONAI T1 head (2 mm, LAS) and its re-oriented, moved, 4 mm copy (RAS)."""
    folder = shared_data / "registration" / "monai-testing-data"
    return folder / "anatomical.nii", folder / "reoriented_anat_moved.nii"


def lung_ct(shared_data) -> sitk.Image:
    return sitk.ReadImage(str(shared_data / "registration" / "elastix-lung-ct" / "3DCT_lung_baseline_small.mha"))


def register_command(tmp_path, fixed, moving, *options) -> dict:
    """`medai register FIXED MOVING OPTIONS`; returns the JSON report."""
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "register",
                str(fixed),
                str(moving),
                "--output-transform",
                str(tmp_path / "T.h5"),
                "--report",
                str(report),
                *options,
            ]
        )
        == 0
    )
    return json.loads(report.read_text())


def round_trip_mm(scene, fixed_node, moving_node, transform_type="rigid") -> np.ndarray:
    """|inverse(forward(p)) - p| (mm) over every 4th voxel of the fixed volume: register moving onto fixed,
    then fixed onto moving (default preset both ways), and compose the two ITK transforms."""
    logic = MedAIRegisterLogic(scene)
    logic.register_volumes(fixed_node, moving_node, transform_type)
    forward = logic.last.itk_transform  # fixed point -> moving point
    logic.register_volumes(moving_node, fixed_node, transform_type)
    backward = logic.last.itk_transform  # moving point -> fixed point
    points = simulation.grid_points(bridge.volume_to_sitk(fixed_node), 4)
    return np.array(
        [
            np.linalg.norm(np.subtract(backward.TransformPoint(forward.TransformPoint(tuple(p))), p))
            for p in points.tolist()
        ]
    )


@pytest.mark.parametrize("transform", ["rigid", "affine", "bspline"])
def test_mr_mr_brain_preset_improves_mi_and_ncc_on_the_monai_head(shared_data, tmp_path, transform):
    """`--preset mr-mr-brain` on the MONAI pair used to lower MI and NCC below their starting values (its
    coarse level had ~700 samples for a 48 x 48 joint histogram, whose MI grows as samples leave the overlap)."""
    fixed, moving = monai_pair(shared_data)
    metrics = register_command(tmp_path, fixed, moving, "--transform", transform, "--preset", "mr-mr-brain")["metrics"]
    assert metrics["preset"] == "mr-mr-brain"
    assert metrics["kept_start"] is False
    assert metrics["mi_after"] > metrics["mi_before"] + 0.3  # 0.055 nats at the start
    assert metrics["ncc_after"] > metrics["ncc_before"] + 0.4  # 0.149 at the start
    assert metrics["metric_after"] == metrics["mi_after"]


def test_auto_preset_is_chosen_from_the_intensities_and_reported(shared_data, tmp_path):
    fixed, moving = monai_pair(shared_data)
    report = register_command(tmp_path, fixed, moving)
    assert report["parameters"]["preset"] == "auto"
    assert report["metrics"]["preset"] == "mr-mr-brain"
    assert "MR-like" in report["metrics"]["preset_reason"]
    assert report["metrics"]["ncc_after"] > report["metrics"]["ncc_before"] + 0.4
    assert report["warnings"] == []


def test_monai_head_default_rigid_is_self_consistent(shared_data, scene):
    fixed_path, moving_path = monai_pair(shared_data)
    fixed, moving = bridge.load_volume(scene, fixed_path), bridge.load_volume(scene, moving_path)
    error = round_trip_mm(scene, fixed, moving)
    assert error.mean() < 0.6  # voxels of 2 and 4 mm
    assert error.max() < 1.5


def test_ct_and_mr_like_volumes_get_the_multimodal_preset(shared_data, scene):
    """A real lung CT and its moved copy with a non-monotonic intensity remapping (no HU air left: MR-like):
    auto picks ct-mr-head, recovers the motion to < 1 mm and is self-consistent to < 0.5 mm."""
    ct = lung_ct(shared_data)
    moved, truth = simulation.moved_copy(ct, (10.0, -6.0, 12.0), (15.0, -20.0, 12.0))
    fixed = bridge.sitk_to_volume(ct, scene, "CT")
    moving = bridge.sitk_to_volume(moved, scene, "MR-like")
    logic = MedAIRegisterLogic(scene)
    logic.register_volumes(fixed, moving, "rigid")
    assert logic.last.metrics["preset"] == "ct-mr-head"
    assert logic.last.metrics["preset_reason"].startswith("fixed: CT-like")
    points = simulation.grid_points(ct, 4, ct > -500)
    assert intensity_registration.target_registration_error(logic.last.itk_transform, truth, points).mean() < 1.0
    assert round_trip_mm(scene, fixed, moving).mean() < 0.5


def test_two_cts_get_ct_ct_and_a_dicom_modality_overrides_the_intensities(shared_data, scene):
    ct = lung_ct(shared_data)
    moved, _ = simulation.moved_copy(ct, (4.0, 0.0, 6.0), (5.0, -5.0, 3.0), remap=False)
    fixed = bridge.sitk_to_volume(ct, scene, "CT")
    moving = bridge.sitk_to_volume(moved, scene, "CT moved")
    logic = MedAIRegisterLogic(scene)
    logic.register_volumes(fixed, moving, "rigid")
    assert logic.last.metrics["preset"] == "ct-ct"
    moving.SetAttribute("DICOM.Modality", "PT")
    logic.register_volumes(fixed, moving, "rigid")
    assert logic.last.metrics["preset"] == "pet-ct"
    assert "DICOM modality PT" in logic.last.metrics["preset_reason"]


def test_modality_from_real_intensities(shared_data):
    folder = shared_data / "segmentation" / "totalsegmentator"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_ct_sm.nii.gz")))
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_mr_sm.nii.gz")))
    head = sitk.GetArrayFromImage(
        sitk.ReadImage(str(shared_data / "registration" / "ants-templates" / "ants_ch2.nii.gz"))
    )
    assert image_modality(ct)[0] == "CT"
    assert image_modality(mr)[0] == "MR"
    assert image_modality(head)[0] == "MR"
    assert choose_preset(ct, mr)[0] == "ct-mr-head"
    assert choose_preset(mr, ct)[0] == "ct-mr-head"
    assert choose_preset(mr, head)[0] == "mr-mr-brain"
    assert choose_preset(ct, ct, "CT", "MRI")[0] == "ct-mr-head"  # DICOM says MR: believed


def test_a_result_worse_than_the_start_is_not_returned(shared_data):
    """A 'result' that turns the moving head 25 degrees away from where registration put it: MI drops, so the
    start is kept, with a warning; the other way round the result is kept."""
    fixed_path, moving_path = monai_pair(shared_data)
    fixed, moving = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(moving_path))
    good = intensity_registration.register_images(fixed, moving, "rigid", preset="mr-mr-brain").transform
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    bad = sitk.CompositeTransform([good, simulation.rigid_transform((25.0, 0.0, 0.0), (0.0, 0.0, 0.0), centre)])
    with pytest.warns(MedAIWarning, match="starting position is kept"):
        kept, resampled, metrics = keep_better_than_start(fixed, moving, good, bad)
    assert kept is good
    assert metrics["kept_start"] is True
    assert metrics["metric_after"] < metrics["metric_before"]
    np.testing.assert_array_equal(
        resampled,
        sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(moving, sitk.sitkFloat32), fixed, good, sitk.sitkLinear, 0.0)),
    )
    kept, _, metrics = keep_better_than_start(fixed, moving, bad, good)
    assert kept is good
    assert metrics["kept_start"] is False
