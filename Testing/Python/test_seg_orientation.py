"""Model-card ``orientation``: the input is reoriented (SimpleITK DICOMOrient) before inference and the
labels come back exactly onto the input's grid, also for an oblique volume (real data, rotated grid)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_seg_inference import THRESHOLD, threshold_net  # noqa: I001

from MedAICommonLib import bridge
from MedAICommonLib.geometry import Geometry, rotation_matrix
from MedAISegLib.inference.model_card import ModelCard
from MedAISegLib.inference.torchscript_model import run_model
from MedAISegLib.logic import MedAISegLogic


class RampNet(torch.nn.Module):
    """Foreground = the upper half of the network's first spatial axis (i): not direction-agnostic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2]
        ramp = torch.arange(n, dtype=x.dtype, device=x.device) - (n - 1) / 2.0
        fg = ramp.view(1, 1, n, 1, 1).expand(x.shape[0], 1, n, x.shape[3], x.shape[4])
        return torch.cat([torch.zeros_like(fg), fg], 1)


@pytest.fixture
def oblique(shared_data):
    """anatomical.nii (real MR, LAS) with its grid rotated 20 degrees about S and 10 about L: oblique."""
    image = sitk.ReadImage(str(shared_data / "registration/monai-testing-data/anatomical.nii"), sitk.sitkFloat32)
    rotation = rotation_matrix("x", 10.0) @ rotation_matrix("z", 20.0)  # no axis stays aligned
    image.SetDirection(tuple((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.abs(direction).max() < 0.99  # oblique
    return image


def card(orientation, roi=(16, 16, 16), **extra):
    return ModelCard.from_dict(
        {
            "name": "t",
            "roi_size": list(roi),
            "orientation": orientation,
            "labels": [{"value": 1, "name": "bright"}],
            **extra,
        }
    )


def test_direction_agnostic_network_gives_the_same_voxels_in_any_orientation(oblique):
    expected = sitk.GetArrayFromImage(oblique) > THRESHOLD
    assert 100 < expected.sum() < expected.size / 2
    net = threshold_net()
    for orientation in (None, "RAS", "LPS", "PIR"):
        result = run_model(net, card(orientation), [oblique], return_probabilities=True)
        np.testing.assert_array_equal(result.labels, expected, err_msg=str(orientation))
        assert result.info["orientation"] == orientation
        assert not result.info["resampled"]
        assert result.geometry.same_grid(Geometry.from_sitk(oblique).to_space("RAS"))
        np.testing.assert_allclose(result.probabilities[1] > 0.5, expected)


@pytest.mark.parametrize(("orientation", "side"), [("RAS", "right"), ("LPS", "left")])
def test_network_sees_the_card_orientation(oblique, orientation, side):
    size = sitk.DICOMOrient(oblique, orientation).GetSize()
    scripted = torch.jit.script(RampNet())
    result = run_model(scripted, card(orientation, roi=size), [oblique])
    labels = result.labels.astype(bool)
    assert 0.4 < labels.mean() < 0.6
    # physical check: labelled voxels lie towards the named side (RAS x: + is right)
    geometry = Geometry.from_sitk(oblique).to_space("RAS")
    x_ras = geometry.index_to_point(np.argwhere(np.ones(labels.shape, bool))[:, ::-1].astype(float))[:, 0]
    x_ras = x_ras.reshape(labels.shape)
    sign = 1.0 if side == "right" else -1.0
    assert sign * (x_ras[labels].mean() - x_ras[~labels].mean()) > 20.0  # mm
    # exact check: the input's i axis points mostly left, so the split is a plane of constant i
    n = oblique.GetSize()[0]
    i = np.arange(n)[None, None, :]
    expected = np.broadcast_to(i < (n - 1) / 2.0 if side == "right" else i > (n - 1) / 2.0, labels.shape)
    np.testing.assert_array_equal(labels, expected)


def test_reoriented_and_resampled_card_maps_back_to_the_input_grid(oblique):
    result = run_model(threshold_net(), card("RAS", spacing_mm=[3.0, 3.0, 3.0]), [oblique])
    assert result.info["resampled"]
    # by hand: reorient, linear to 3 mm on that grid, threshold, nearest back onto the oblique input grid
    ras = sitk.DICOMOrient(oblique, "RAS")
    size = [int(round(n * s / 3.0)) for n, s in zip(ras.GetSize(), ras.GetSpacing())]
    low = sitk.Resample(
        ras,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        ras.GetOrigin(),
        (3.0, 3.0, 3.0),
        ras.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    back = sitk.Resample(
        sitk.Cast(low > THRESHOLD, sitk.sitkUInt8), oblique, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    assert (result.labels == sitk.GetArrayFromImage(back)).mean() > 0.999


def test_logic_labels_of_an_oriented_card_land_on_the_bright_ras_voxels(scene, oblique, tmp_path):
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(threshold_net()), str(model))
    (tmp_path / "net.ts.json").write_text(json.dumps(card("RAS").to_dict()))
    array = sitk.GetArrayFromImage(oblique)
    node = bridge.create_volume(scene, array, Geometry.from_sitk(oblique).to_space("RAS"), "oblique head")
    seg = MedAISegLogic(scene).segment_with_model([node], model, device="cpu")
    mask, geometry = bridge.segment_mask(seg, "bright")
    volume, volume_geometry = bridge.array_from_volume(node)
    labelled = geometry.index_to_point(np.argwhere(mask)[:, ::-1].astype(float))
    bright = volume_geometry.index_to_point(np.argwhere(volume > THRESHOLD)[:, ::-1].astype(float))
    key = lambda p: sorted(map(tuple, np.round(p, 3).tolist()))  # noqa: E731
    assert key(labelled) == key(bright)


def test_card_orientation_must_be_an_axis_code():
    with pytest.raises(ValueError, match="orientation"):
        card("RRS")
