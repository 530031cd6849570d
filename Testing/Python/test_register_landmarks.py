"""Paired-landmark registration on the real lung-CT landmark pairs (elastix), against numpy."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedAIRegisterLib.pointsets import landmarks


def _lung_pairs(shared_data):
    folder = shared_data / "registration" / "itkelastix"
    fixed = landmarks.read_elastix_points(folder / "CT_3D_lung_fixed_point_set_corrected.txt")
    moving = landmarks.read_elastix_points(folder / "CT_3D_lung_moving_point_set_corrected.txt")
    return fixed, moving


def _kabsch_numpy(p, q):
    """Independent rigid least squares: R, t minimising |R p + t - q| (Arun et al. 1987)."""
    pc, qc = p.mean(0), q.mean(0)
    h = sum(np.outer(a - pc, b - qc) for a, b in zip(p, q))
    u, _, vt = np.linalg.svd(h)
    r = vt.T @ u.T
    if np.linalg.det(r) < 0:
        vt[2] *= -1
        r = vt.T @ u.T
    return r, qc - r @ pc


def test_rigid_matches_numpy_svd_on_lung_landmarks(shared_data):
    fixed, moving = _lung_pairs(shared_data)
    result = landmarks.fit_landmarks(moving, fixed, "rigid")
    r, t = _kabsch_numpy(moving, fixed)
    reference = np.linalg.norm(moving @ r.T + t - fixed, axis=1)
    assert abs(result.fre_mean_mm - reference.mean()) < 0.01
    np.testing.assert_allclose(result.matrix[:3, :3], r, atol=1e-6)
    assert np.linalg.det(result.matrix[:3, :3]) == pytest.approx(1.0, abs=1e-9)
    # The source's independent measurement: rigid residual mean 3.58 mm, max 13.49 mm.
    assert result.fre_mean_mm == pytest.approx(3.58, abs=0.01)
    assert result.residuals_mm.max() == pytest.approx(13.49, abs=0.01)
    # ... and SimpleITK's landmark initializer (rigid) agrees too.
    sitk_t = sitk.LandmarkBasedTransformInitializer(
        sitk.VersorRigid3DTransform(), fixed.ravel().tolist(), moving.ravel().tolist()
    )
    mapped = np.array([sitk_t.TransformPoint(tuple(p)) for p in fixed])  # ITK: fixed -> moving
    inverse_mapped = result.transform_points(mapped)
    assert np.abs(inverse_mapped - fixed).max() < 1e-3
    # Predicted TRE is positive and grows away from the fiducial centroid.
    assert np.all(result.predicted_tre_mm > 0)
    far = landmarks.predicted_tre(moving, moving.mean(0) + [0, 0, 500.0], result.extras["fle_estimate_mm"])
    assert far[0] > result.predicted_tre_mm.max()


def test_affine_and_similarity_match_numpy_lstsq(shared_data):
    fixed, moving = _lung_pairs(shared_data)
    result = landmarks.fit_landmarks(moving, fixed, "affine")
    homogeneous = np.hstack([moving, np.ones((len(moving), 1))])
    solution, *_ = np.linalg.lstsq(homogeneous, fixed, rcond=None)
    reference = np.linalg.norm(homogeneous @ solution - fixed, axis=1)
    assert abs(result.fre_mean_mm - reference.mean()) < 0.01
    # The source's measurement (affine fixed -> moving, not symmetric): mean 2.50 mm, max 14.15 mm.
    forward = landmarks.fit_landmarks(fixed, moving, "affine")
    assert forward.fre_mean_mm == pytest.approx(2.50, abs=0.01)
    assert forward.residuals_mm.max() == pytest.approx(14.15, abs=0.01)
    similarity = landmarks.fit_landmarks(moving, fixed, "similarity")
    rigid = landmarks.fit_landmarks(moving, fixed, "rigid")
    # Nested models: affine <= similarity <= rigid in RMS residual.
    assert result.fre_rms_mm <= similarity.fre_rms_mm + 1e-9 <= rigid.fre_rms_mm + 2e-9


def test_similarity_recovers_known_scale_and_tps_interpolates():
    rng = np.random.default_rng(3)
    source = rng.uniform(-50, 50, (12, 3))
    angle = np.deg2rad(25.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    target = 1.2 * source @ rot.T + [5.0, -3.0, 10.0]
    sim = landmarks.fit_landmarks(source, target, "similarity")
    assert sim.scale == pytest.approx(1.2, abs=1e-9)
    assert sim.residuals_mm.max() < 1e-9
    bent = target + 3.0 * np.sin(source / 20.0)
    tps = landmarks.fit_landmarks(source, bent, "tps")
    assert tps.residuals_mm.max() < 1e-3
    with pytest.raises(ValueError, match="at least"):
        landmarks.fit_landmarks(source[:2], target[:2], "rigid")
