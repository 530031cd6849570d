"""Preprocessing: 3D non-local means (checked against a brute-force NLM) and the SimpleITK filters."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAISegLib.preprocessing import filters
from MedAISegLib.preprocessing.nonlocal_means import estimate_noise_sigma, nonlocal_means


def brute_force_nlm(a, h, sigma, p, s):
    """Textbook NLM, voxel by voxel (mirror padding, centre weight = max of the others)."""
    pad = np.pad(a.astype(np.float64), p + s, mode="reflect")
    out = np.zeros(a.shape)
    r = range(-s, s + 1)
    for v in itertools.product(*[range(n) for n in a.shape]):
        c = [x + p + s for x in v]
        ref = pad[c[0] - p : c[0] + p + 1, c[1] - p : c[1] + p + 1, c[2] - p : c[2] + p + 1]
        weights, values = [], []
        for d in itertools.product(r, r, r):
            if d == (0, 0, 0):
                continue
            q = [c[i] + d[i] for i in range(3)]
            patch = pad[q[0] - p : q[0] + p + 1, q[1] - p : q[1] + p + 1, q[2] - p : q[2] + p + 1]
            dist = np.mean((ref - patch) ** 2)
            weights.append(np.exp(-max(dist - 2 * sigma**2, 0) / h**2))
            values.append(pad[tuple(q)])
        w_c = max(max(weights), 1e-12)
        out[v] = (np.dot(weights, values) + w_c * pad[tuple(c)]) / (np.sum(weights) + w_c)
    return out


def test_nlm_equals_brute_force_definition():
    rng = np.random.default_rng(1)
    a = (rng.normal(0, 10, (5, 6, 7)) + np.arange(7) * 20).astype(np.float32)
    ours = nonlocal_means(a, h=12.0, sigma=10.0, patch_radius=1, search_radius=2, chunk_voxels=4000)
    reference = brute_force_nlm(a, 12.0, 10.0, 1, 2)
    np.testing.assert_allclose(ours, reference, atol=1e-3 * np.ptp(a))


def test_nlm_denoises_phantom_and_keeps_edges():
    phantom = make_ct_phantom(shape_kji=(16, 48, 48), spacing=(6.0, 6.0, 8.0), noise_hu=40.0)
    clean = make_ct_phantom(shape_kji=(16, 48, 48), spacing=(6.0, 6.0, 8.0), noise_hu=0.0).ct
    sigma = estimate_noise_sigma(phantom.ct)
    assert 30 < sigma < 50
    out = nonlocal_means(phantom.ct, patch_radius=1, search_radius=2)
    rmse_in = np.sqrt(np.mean((phantom.ct - clean) ** 2))
    rmse_out = np.sqrt(np.mean((out - clean) ** 2))
    assert rmse_out < 0.6 * rmse_in
    # lung/body edge survives: mean lung HU stays far from soft tissue
    assert out[phantom.labels == 2].mean() < -700


@pytest.mark.gpu
def test_nlm_cuda_matches_cpu():
    a = make_ct_phantom(shape_kji=(12, 32, 32), noise_hu=30.0).ct
    cpu = nonlocal_means(a, h=30, sigma=30)
    gpu = nonlocal_means(a, h=30, sigma=30, device="cuda")
    np.testing.assert_allclose(cpu, gpu, atol=0.05)


@pytest.fixture
def ct_image():
    phantom = make_ct_phantom(shape_kji=(12, 40, 40), spacing=(6.0, 6.0, 8.0), noise_hu=30.0)
    image = sitk.GetImageFromArray(phantom.ct)
    phantom.geometry.apply_to_sitk(image)
    return image, phantom


@pytest.mark.parametrize("method", ["anisotropic", "curvature", "nlm"])
def test_edge_preserving_filters_reduce_noise_in_uniform_tissue(ct_image, method):
    image, phantom = ct_image
    out = filters.denoise(image, method)
    assert out.GetSize() == image.GetSize()
    assert out.GetDirection() == image.GetDirection()
    before = sitk.GetArrayFromImage(image)[phantom.labels == 1].std()
    after = sitk.GetArrayFromImage(out)[phantom.labels == 1].std()
    assert after < 0.7 * before
    assert sitk.GetArrayFromImage(image).std() > 0  # input untouched


def test_clahe_and_histogram_equalisation_spread_intensities(ct_image):
    image, _ = ct_image
    window = filters.window(image, level=40, width=400)
    arr = sitk.GetArrayFromImage(window)
    assert arr.min() >= 0
    assert arr.max() <= 1
    eq = sitk.GetArrayFromImage(filters.histogram_equalization(image))
    # equalised values are ~uniform: the median moves to the middle of the range
    lo, hi = eq.min(), eq.max()
    assert abs((np.median(eq) - lo) / (hi - lo) - 0.5) < 0.1
    out = sitk.GetArrayFromImage(filters.clahe(image, radius=3))
    assert out.shape == arr.shape
    assert np.isfinite(out).all()


def test_n4_removes_a_smooth_bias_field():
    phantom = make_ct_phantom(shape_kji=(12, 40, 40), spacing=(6.0, 6.0, 8.0), noise_hu=0.0)
    tissue = (phantom.labels >= 1).astype(np.float32) * 500 + 100
    x = np.linspace(-1, 1, 40)
    bias = np.exp(0.4 * x)[None, None, :]
    image = sitk.GetImageFromArray((tissue * bias).astype(np.float32))
    phantom.geometry.apply_to_sitk(image)
    body = phantom.labels >= 1
    corrected = sitk.GetArrayFromImage(filters.n4_bias_correction(image, shrink=1))
    cv = lambda a: a[body].std() / a[body].mean()  # noqa: E731
    assert cv(corrected) < 0.5 * cv(tissue * bias)


def test_resample_to_spacing_and_normalise(ct_image):
    image, _ = ct_image
    out = filters.resample_to_spacing(image, 3.0)
    assert out.GetSpacing() == (3.0, 3.0, 3.0)
    assert out.GetSize() == (80, 80, 32)
    assert out.GetOrigin() == image.GetOrigin()
    z = sitk.GetArrayFromImage(filters.normalize(image))
    assert abs(z.mean()) < 1e-3
    assert abs(z.std() - 1) < 1e-3
    with pytest.raises(ValueError, match="Unknown"):
        filters.denoise(image, "magic")
