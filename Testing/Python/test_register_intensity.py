"""MI registration of real CT and MR volumes moved by known rigid transforms with a non-monotonic
intensity remapping (a second 'modality'): SimpleITK path and torch path recover them to TRE <= 1 mm."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib.geometry import Geometry
from MedAIRegisterLib import simulation
from MedAIRegisterLib.intensity import intensity_registration
from MedAIRegisterLib.intensity.numba_registration import mi_and_gradient, register_numba
from MedAIRegisterLib.intensity.torch_registration import register_torch

MOTION = {"ct": ((10.0, -6.0, 12.0), (15.0, -20.0, 12.0)), "mr": ((-12.0, 8.0, 10.0), (-18.0, 14.0, 20.0))}


def load_case(shared_data, kind):
    if kind == "ct":
        image = sitk.ReadImage(str(shared_data / "registration" / "elastix-lung-ct" / "3DCT_lung_baseline_small.mha"))
    else:  # the ICBM/Colin 'ch2' T1 head, 1 mm, shrunk to 3 mm to keep the test fast
        image = sitk.Shrink(
            sitk.ReadImage(str(shared_data / "registration" / "ants-templates" / "ants_ch2.nii.gz")), [3, 3, 3]
        )
    rotation, translation = MOTION[kind]
    moving, truth = simulation.moved_copy(image, rotation, translation)
    body = image > float(np.percentile(sitk.GetArrayViewFromImage(image), 50))
    return image, moving, truth, simulation.grid_points(image, 4, body)


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_simpleitk_mattes_recovers_known_motion(shared_data, kind):
    fixed, moving, truth, points = load_case(shared_data, kind)
    start = intensity_registration.target_registration_error(sitk.Transform(), truth, points)
    assert start.mean() > 20.0  # the motion is large: ~20 degrees and ~30 mm
    result = intensity_registration.register_images(fixed, moving, "rigid", preset="ct-mr-head")
    tre = intensity_registration.target_registration_error(result.transform, truth, points)
    assert tre.mean() <= 1.0
    assert tre.max() <= 1.5


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_torch_parzen_mi_recovers_known_motion_on_cpu(shared_data, kind):
    fixed, moving, truth, points = load_case(shared_data, kind)
    result = register_torch(
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
        "rigid",
        iterations=60,
        device="cpu",
    )
    tre = intensity_registration.target_registration_error(result.sitk_transform(), truth, points)
    assert tre.mean() <= 1.0
    assert tre.max() <= 1.5
    assert result.mutual_information > 0.3


@pytest.mark.parametrize("kind", ["ct", "mr"])
def test_numba_cpu_path_recovers_known_motion(shared_data, kind):
    """MedAI's default CPU path (fused numba MI kernel), same settings as the benchmark against SimpleITK."""
    fixed, moving, truth, points = load_case(shared_data, kind)
    result = register_numba(
        sitk.GetArrayFromImage(fixed),
        Geometry.from_sitk(fixed),
        sitk.GetArrayFromImage(moving),
        Geometry.from_sitk(moving),
        "rigid",
        bins=32,
        sampling_percentage=0.2,
    )
    tre = intensity_registration.target_registration_error(result.sitk_transform(), truth, points)
    assert tre.mean() <= 1.0
    assert tre.max() <= 1.5
    assert result.mutual_information > 0.3


def test_numba_mi_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    moving = ndimage.gaussian_filter(rng.normal(size=(30, 32, 34)), 2).astype(np.float32)
    points = rng.uniform(-12, 12, size=(4000, 3))
    to_index = np.array([[1.0, 0, 0, 17.0], [0, 1.0, 0, 16.0], [0, 0, 1.0, 15.0]])
    values = ndimage.map_coordinates(moving, (points + [17, 16, 15])[:, ::-1].T, order=1)
    fixed_bins = np.clip(np.sin(values * 40) * 12 + 15, 2, 29)  # non-monotonic relation
    lo, hi = np.percentile(moving, [1, 99])
    none = np.zeros((1, 1, 1), np.uint8)

    def mi(matrix, offset):
        return mi_and_gradient(points, fixed_bins, matrix, offset, moving, to_index, lo, 27 / (hi - lo), 32, none, True)

    matrix = np.eye(3) + 0.02 * rng.normal(size=(3, 3))
    offset = np.array([0.3, -0.2, 0.4])
    value, d_matrix, d_offset, used = mi(matrix, offset)
    assert value > 0.05
    assert used > 3000
    h = 1e-4
    for a in range(3):
        step = np.zeros(3)
        step[a] = h
        numeric = (mi(matrix, offset + step)[0] - mi(matrix, offset - step)[0]) / (2 * h)
        assert abs(numeric - d_offset[a]) < 1e-3 * max(1.0, abs(numeric))
        for b in range(3):
            e = np.zeros((3, 3))
            e[a, b] = h
            numeric = (mi(matrix + e, offset)[0] - mi(matrix - e, offset)[0]) / (2 * h)
            assert abs(numeric - d_matrix[a, b]) < 2e-3 * max(1.0, abs(numeric))


def test_remap_is_non_monotonic(shared_data):
    fixed, moving, _, _ = load_case(shared_data, "ct")
    knots_in, knots_out = simulation.default_remap_knots(fixed)
    assert np.any(np.diff(knots_out[1:-1]) > 0)
    assert np.any(np.diff(knots_out[1:-1]) < 0)
    assert (
        abs(
            np.corrcoef(
                np.interp(np.linspace(knots_in[1], knots_in[-2], 50), knots_in, knots_out), np.linspace(0, 1, 50)
            )[0, 1]
        )
        < 0.9
    )
