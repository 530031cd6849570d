"""MONAI bundles through MedAI's sliding window: same labels as the bundle's own inferer, flip TTA,
probabilities and entropy, and the memory guard, on a real volume whose direction is not identity."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_seg_inference import THRESHOLD, write_bundle  # noqa: I001

from MedAICommonLib import bridge
from MedAISegLib.inference.bundle import run_bundle
from MedAISegLib.inference.bundle_trust import record_trust
from MedAISegLib.inference.memory_guard import estimate_memory
from MedAISegLib.logic import MedAISegLogic

GAIN = 0.01  # threshold_net's logit slope


@pytest.fixture
def head(shared_data):
    """anatomical.nii (LAS: direction not identity), float32."""
    return sitk.ReadImage(str(shared_data / "registration/monai-testing-data/anatomical.nii"), sitk.sitkFloat32)


def set_config(bundle, **inferer):
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["inferer"].update(inferer)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))


def random_conv_bundle(folder, seed=0, roi=(16, 16, 16)):
    """A trusted bundle whose network is a random 3x3x3 convolution (neither flip- nor blend-invariant)."""
    bundle = write_bundle(folder)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"].update({"kernel_size": 3, "padding": 1})
    config["inferer"]["roi_size"] = list(roi)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(1e-3)  # head intensities are ~1e4
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    record_trust(bundle)
    return bundle, net.eval()


def test_medai_sliding_window_gives_the_bundle_own_labels(head, tmp_path):
    bundle, _ = random_conv_bundle(tmp_path / "bundle")
    own = run_bundle(bundle, [head])
    ours = run_bundle(bundle, [head], inferer="medai")
    assert own.info["inferer"] == "bundle"
    assert ours.info["inferer"] == "medai"
    assert ours.info["windows"] > 1
    assert 0.05 < own.labels.mean() < 0.95
    np.testing.assert_array_equal(ours.labels, own.labels)


def test_bundle_probabilities_and_entropy_are_the_network_softmax(head, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    record_trust(bundle)
    result = run_bundle(bundle, [head], tta_flips=True, return_probabilities=True, return_entropy=True)
    assert result.info["medai_inferer_because"] == ["flip TTA", "probabilities", "entropy"]
    x = sitk.GetArrayFromImage(head).astype(np.float64)
    p1 = 1.0 / (1.0 + np.exp(-GAIN * (x - THRESHOLD)))  # softmax of (0, GAIN (x - T)); flips change nothing
    np.testing.assert_array_equal(result.labels, x > THRESHOLD)
    assert result.probabilities.shape == (2, *x.shape)
    np.testing.assert_allclose(result.probabilities[1], p1, atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    p = np.clip(np.stack([1 - p1, p1]), 1e-8, None)
    np.testing.assert_allclose(result.entropy, -(p * np.log(p)).sum(axis=0), atol=1e-4)


def test_bundle_flip_tta_averages_the_eight_flips(head, tmp_path):
    size = head.GetSize()
    bundle, net = random_conv_bundle(tmp_path / "bundle", seed=3, roi=size)  # one window: easy to do by hand
    result = run_bundle(bundle, [head], tta_flips=True, return_probabilities=True)
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(head.GetDirection()) == "LAS"
    ras = torch.from_numpy(np.flip(sitk.GetArrayFromImage(head).transpose(2, 1, 0), 0).copy())[None, None]
    total = torch.zeros(1, 2, *ras.shape[2:])
    with torch.no_grad():
        for flips in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            out = net(torch.flip(ras, flips) if flips else ras)
            total += torch.flip(out, flips) if flips else out
    expected = torch.softmax(total[0] / 8, dim=0).numpy()
    expected_kji = np.flip(expected, 1).transpose(0, 3, 2, 1)  # back to LAS, channel + KJI
    np.testing.assert_allclose(result.probabilities, expected_kji, atol=1e-5)
    plain = run_bundle(bundle, [head], return_probabilities=True)
    assert np.abs(plain.probabilities - result.probabilities).max() > 1e-3  # TTA really changed something


def test_memory_guard_switches_bundles_to_the_stitched_path_or_refuses(head, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    record_trust(bundle)
    voxels = int(np.prod(head.GetSize()))
    own = estimate_memory(head.GetSize(), 1, 2, (16, 16, 16), batch_size=2)
    own_host = own.host_bytes + 2 * voxels * 4  # the bundle's own path also inverts full float maps
    fits_ours_only = run_bundle(bundle, [head], memory=(None, (own.host_bytes + own_host) // 2))
    assert fits_ours_only.info["inferer"] == "medai"
    assert fits_ours_only.info["medai_inferer_because"] == ["memory guard"]
    np.testing.assert_array_equal(fits_ours_only.labels, sitk.GetArrayFromImage(head) > THRESHOLD)
    assert run_bundle(bundle, [head], memory=(None, own_host + 1)).info["inferer"] == "bundle"
    with pytest.raises(ValueError, match="coarser spacing"):
        run_bundle(bundle, [head], memory=(None, 1000))


def test_logic_creates_probability_and_uncertainty_nodes_for_bundles(scene, shared_data, tmp_path):
    node = bridge.load_volume(scene, shared_data / "registration/monai-testing-data/anatomical.nii")
    bundle = write_bundle(tmp_path / "bundle")
    logic = MedAISegLogic(scene)
    seg = logic.segment_with_model(
        [node], bundle, device="cpu", flip_tta=True, return_probabilities=True, return_entropy=True, trust_bundle=True
    )
    assert logic.last_result.extra_nodes == ["anatomical probability bright tissue", "anatomical uncertainty"]
    x = bridge.array_from_volume(node)[0].astype(np.float64)
    assert int(bridge.segment_mask(seg, "bright tissue")[0].sum()) == int((x > THRESHOLD).sum())
    probability = scene.GetFirstNodeByName("anatomical probability bright tissue")
    array, geometry = bridge.array_from_volume(probability)
    assert geometry.same_grid(bridge.volume_geometry(node), tol_mm=1e-3)
    np.testing.assert_allclose(array, 1.0 / (1.0 + np.exp(-GAIN * (x - THRESHOLD))), atol=1e-5)


def test_voxels_coincide_only_for_permuted_or_flipped_grids():
    from MedAICommonLib.geometry import Geometry
    from MedAISegLib.inference.bundle import voxels_coincide

    reference = Geometry((2.0, 2.0, 3.0), (10.0, -5.0, 7.0), np.diag([-1.0, 1.0, -1.0]), "RAS", (5, 6, 7))
    # the same voxels with i and j swapped and i flipped: the origin is the reference's last i
    flipped = Geometry(
        (2.0, 2.0, 3.0),
        reference.index_to_point([6, 0, 0]),
        np.column_stack([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
        "RAS",
        (5, 7, 6),
    )
    assert voxels_coincide(flipped, reference)
    assert voxels_coincide(reference.to_space("LPS"), reference)
    half = Geometry((2.0, 2.0, 3.0), np.add(reference.origin, (1.0, 0, 0)), reference.direction, "RAS", (5, 6, 7))
    assert not voxels_coincide(half, reference)
    coarse = Geometry((3.0, 3.0, 3.0), reference.origin, reference.direction, "RAS", (5, 4, 5))
    assert not voxels_coincide(coarse, reference)


class OutOfMemoryAboveOneWindow(torch.nn.Module):
    """threshold_net that fails like CUDA does when given more than one window at a time."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.net.weight.zero_()
            self.net.bias.zero_()
            self.net.weight[1, 0] = GAIN
            self.net.bias[1] = -GAIN * THRESHOLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.net(x)


def test_out_of_memory_in_the_bundle_inferer_retries_on_medai_path(head, tmp_path):
    bundle = write_bundle(tmp_path / "bundle", weights="ts")  # sw_batch_size 2 in the bundle's inferer
    torch.jit.save(torch.jit.script(OutOfMemoryAboveOneWindow()), str(bundle / "models" / "model.ts"))
    record_trust(bundle)
    result = run_bundle(bundle, [head])
    assert result.info["medai_inferer_because"] == ["out of memory in the bundle's inferer"]
    assert result.info["batch_size"] == 1
    np.testing.assert_array_equal(result.labels, sitk.GetArrayFromImage(head) > THRESHOLD)


def test_memory_plan_for_a_512x512x600_ct_without_gpu():
    """Estimates only: a 14-class bundle at 1.5 mm on a 0.8 x 0.8 x 1 mm CT of 512 x 512 x 600 voxels."""
    from MedAISegLib.inference.bundle import memory_plan

    window = {"roi": [96, 96, 96], "batch": 4, "overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125}
    working = (273, 273, 400)
    args = (working, 1, 14, window, 62_000_000, 512 * 512 * 600, torch.device("cpu"), False)
    own_fits, setting = memory_plan(*args, (None, 24 * 2**30), None)
    assert own_fits
    assert setting.fits
    own_fits, setting = memory_plan(*args, (None, 8 * 2**30), None)
    assert not own_fits  # 14 full-resolution float maps alone are 8.8 GB
    assert setting.fits
    assert setting.host_bytes < 4 * 2**30
    own_fits, setting = memory_plan(*args, (None, 2**30), None)
    assert not setting.fits
    assert "coarser spacing" in setting.advice
