"""AI inference: sliding window (vs MONAI), TorchScript + model card, MONAI bundle, memory guard.

The test network is a 1x1x1 convolution whose argmax is "intensity > T", so the right answer is
known voxel by voxel, on real volumes whose direction is not identity.
"""

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference as monai_sliding_window

from MedAICommonLib.geometry import Geometry
from MedAISegLib.inference.bundle import is_bundle, run_bundle
from MedAISegLib.inference.bundle_trust import record_trust
from MedAISegLib.inference.memory_guard import choose_setting, estimate_memory
from MedAISegLib.inference.model_card import ModelCard, find_card
from MedAISegLib.inference.sliding_window import sliding_window_inference, window_starts
from MedAISegLib.inference.torchscript_model import load_torchscript_with_card, run_model

THRESHOLD = 10000.5  # anatomical.nii intensity units (int16 values, so no ties)


def trusted(bundle):
    """Record the test's own bundle as trusted (what the user's confirmation does) and return it."""
    record_trust(bundle)
    return bundle


def threshold_net(threshold=THRESHOLD, gain=0.01):
    """Conv3d 1->2, kernel 1: logits (0, gain * (x - threshold)); argmax = x > threshold."""
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = gain
        net.bias[1] = -gain * threshold
    return net.eval()


@pytest.fixture(scope="module")
def head(tmp_path_factory, shared_data):
    path = shared_data / "registration/monai-testing-data/anatomical.nii"
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    assert not np.allclose(Geometry.from_sitk(image).to_space("RAS").direction, np.eye(3))  # LAS: not identity
    return image


def test_window_starts_cover_like_monai():
    assert window_starts(10, 4, 0.25) == [0, 3, 6]
    assert window_starts(4, 8, 0.5) == [0]


def test_constant_blending_equals_monai_sliding_window():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(3, 3, 1)).eval()
    x = torch.randn(1, 23, 30, 11)  # last axis shorter than the ROI: padded on both sides like MONAI
    ours = sliding_window_inference(
        net, x, (16, 16, 16), overlap=0.25, batch_size=3, mode="constant", activation="none", return_probabilities=True
    )
    with torch.no_grad():
        ref = monai_sliding_window(x[None], (16, 16, 16), 1, net, overlap=0.25)[0]
    np.testing.assert_allclose(ours.probabilities, ref.numpy(), atol=1e-5)
    assert ours.labels.dtype == np.uint8
    gauss = sliding_window_inference(
        net, x, (16, 16, 16), overlap=0.5, batch_size=2, tta_flips=False, return_probabilities=True, return_entropy=True
    )
    np.testing.assert_allclose(gauss.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert gauss.entropy.max() <= np.log(3) + 1e-5
    assert (gauss.labels == ours.labels).mean() > 0.9


def test_out_of_memory_retries_with_smaller_batches():
    class Fussy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = threshold_net(0.0, 1.0)

        def forward(self, x):
            if x.shape[0] > 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.net(x)

    x = torch.randn(1, 20, 20, 20)
    result = sliding_window_inference(Fussy(), x, (8, 8, 8), batch_size=4, tta_flips=True)
    assert result.batch_size == 1
    np.testing.assert_array_equal(result.labels, (x[0] > 0).numpy())


def test_torchscript_with_card_lands_on_the_right_voxels(head, tmp_path):
    scripted = torch.jit.script(threshold_net())
    model = tmp_path / "model.ts"
    torch.jit.save(scripted, str(model))
    card = {
        "name": "head threshold",
        "inputs": [{"name": "T1", "modality": "MR"}],
        "roi_size": [16, 16, 16],
        "labels": [{"value": 1, "name": "bright", "color": [1, 0, 0], "terminology": "SCT^1^x"}],
    }
    (tmp_path / "model.ts.json").write_text(json.dumps(card))
    assert find_card(model) == tmp_path / "model.ts.json"
    net, parsed = load_torchscript_with_card(model)
    result = run_model(net, parsed, [head])
    expected = sitk.GetArrayFromImage(head) > THRESHOLD
    assert 100 < expected.sum() < expected.size / 2
    np.testing.assert_array_equal(result.labels, expected)
    assert result.geometry.same_grid(Geometry.from_sitk(head).to_space("RAS"))
    assert result.segments[0].name == "bright"
    # a card asking for 3 mm (input 2 mm): resampled, run, and mapped back to the input grid
    card["spacing_mm"] = [3.0, 3.0, 3.0]
    coarse = run_model(net, ModelCard.from_dict(card), [head], return_probabilities=True)
    assert coarse.info["resampled"]
    assert coarse.labels.shape == expected.shape
    # the same thing by hand: linear resampling to 3 mm, threshold, nearest neighbour back
    size = [int(round(n * 2.0 / 3.0)) for n in head.GetSize()]
    low = sitk.Resample(
        head,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        head.GetOrigin(),
        (3.0, 3.0, 3.0),
        head.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    back = sitk.Resample(sitk.Cast(low > THRESHOLD, sitk.sitkUInt8), head, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert (coarse.labels == sitk.GetArrayFromImage(back)).mean() > 0.999
    assert (coarse.labels.astype(bool) == expected).mean() > 0.85
    assert coarse.probabilities.shape == (2, *expected.shape)


def test_multichannel_card_resamples_channels_onto_first_grid(head):
    net = torch.nn.Conv3d(2, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 1] = 1.0  # only the second channel decides
        net.bias[1] = -THRESHOLD
    second = sitk.Resample(
        head,
        [s // 2 for s in head.GetSize()],
        sitk.Transform(),
        sitk.sitkLinear,
        head.GetOrigin(),
        [s * 2 for s in head.GetSpacing()],
        head.GetDirection(),
    )
    card = ModelCard.from_dict(
        {"inputs": [{"name": "a"}, {"name": "b"}], "roi_size": [16, 16, 16], "labels": [{"value": 1, "name": "x"}]}
    )
    result = run_model(net, card, [head, second])
    assert result.labels.shape == sitk.GetArrayFromImage(head).shape
    on_first = sitk.Resample(second, head, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(result.labels, sitk.GetArrayFromImage(on_first) > THRESHOLD)
    with pytest.raises(ValueError, match="takes 2 input"):
        run_model(net, card, [head])


def write_bundle(folder, spacing=None, weights="pt"):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    pre = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    if spacing:
        pre.append({"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"})
    pre.append({"_target_": "EnsureTyped", "keys": "image"})
    config = {
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"},
            ],
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = {
        "name": "bright tissue",
        "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "bright tissue"}}}},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    if weights == "pt":
        torch.save(threshold_net().state_dict(), folder / "models" / "model.pt")
    else:
        torch.jit.save(torch.jit.script(threshold_net()), str(folder / "models" / "model.ts"))
    return folder


@pytest.mark.parametrize("weights", ["pt", "ts"])
def test_monai_bundle_runs_unchanged_and_lands_on_input_voxels(head, tmp_path, weights):
    bundle = trusted(write_bundle(tmp_path / "bundle", weights=weights))
    assert is_bundle(bundle)
    result = run_bundle(bundle, [head])
    expected = sitk.GetArrayFromImage(head) > THRESHOLD
    np.testing.assert_array_equal(result.labels, expected)
    assert [s.name for s in result.segments] == ["bright tissue"]
    assert not (bundle / "eval").exists()  # SaveImaged skipped


def test_monai_bundle_with_resampling_maps_back(head, tmp_path):
    bundle = trusted(write_bundle(tmp_path / "bundle", spacing=[3.0, 3.0, 3.0]))
    expected = sitk.GetArrayFromImage(head) > THRESHOLD
    results = {}
    for inferer in ("bundle", "medai"):
        results[inferer] = run_bundle(bundle, [head], inferer=inferer).labels
        assert results[inferer].shape == expected.shape
        assert (results[inferer].astype(bool) == expected).mean() > 0.85, inferer
    # a 1x1x1 network is blending-invariant: both inferers give the same labels
    assert (results["bundle"] == results["medai"]).mean() > 0.999


def test_memory_guard_lowers_batch_then_stitches_on_cpu():
    big = estimate_memory((512, 512, 400), 1, 14, (96, 96, 96), batch_size=4)
    small = estimate_memory((512, 512, 400), 1, 14, (96, 96, 96), batch_size=1, cpu_stitching=True)
    assert big.device_bytes > small.device_bytes
    choice = choose_setting(
        (512, 512, 400), 1, 14, (96, 96, 96), device_free_bytes=2 * 2**30, host_free_bytes=64 * 2**30
    )
    assert choice.fits
    assert choice.cpu_stitching
    none = choose_setting((512, 512, 400), 1, 14, (96, 96, 96), device_free_bytes=2**20, host_free_bytes=2**20)
    assert not none.fits
    assert "coarser spacing" in none.advice


def test_flip_tta_unflips_each_prediction():
    torch.manual_seed(1)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()  # not flip-symmetric
    x = torch.randn(1, 12, 10, 8)
    result = sliding_window_inference(
        net, x, (12, 10, 8), mode="constant", tta_flips=True, activation="none", return_probabilities=True
    )
    expected = torch.zeros(2, 12, 10, 8)
    with torch.no_grad():
        for n in range(4):
            for axes in itertools.combinations((2, 3, 4), n):
                out = net(torch.flip(x[None], axes) if axes else x[None])
                expected += (torch.flip(out, axes) if axes else out)[0]
    np.testing.assert_allclose(result.probabilities, (expected / 8).numpy(), atol=1e-5)


def test_two_channel_bundle(head, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["in_channels"] = 2
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    trusted(bundle)
    net = torch.nn.Conv3d(2, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 1] = 0.01  # the second channel decides
        net.bias[1] = -0.01 * THRESHOLD
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    dark = sitk.Image(head) * 0.0
    result = run_bundle(bundle, [dark, head])
    np.testing.assert_array_equal(result.labels, sitk.GetArrayFromImage(head) > THRESHOLD)
