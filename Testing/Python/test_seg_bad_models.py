"""Bad models are refused with a clear error naming the problem and what to do, scene unchanged:
wrong number of input channels (bundle and TorchScript card, both ways) and truncated weights."""

import json
import re

import pytest
import torch
from test_seg_inference import THRESHOLD, threshold_net, write_bundle  # noqa: I001

from MedAICommonLib import bridge
from MedAISegLib.inference.bundle_trust import record_trust
from MedAISegLib.logic import MedAISegLogic


@pytest.fixture
def head_node(scene, shared_data):
    return bridge.load_volume(scene, shared_data / "registration/monai-testing-data/anatomical.nii")


@pytest.fixture
def second_node(scene, head_node):
    array, geometry = bridge.array_from_volume(head_node)
    return bridge.create_volume(scene, array * 0.5, geometry, "second channel")


def snapshot(scene):
    return sorted(
        (scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetMTime()) for i in range(scene.GetNumberOfNodes())
    )


def refused(scene, call, *fragments):
    """Run ``call``, expect a ValueError containing every fragment, and the scene left as it was."""
    before = snapshot(scene)
    with pytest.raises(ValueError, match=re.escape(fragments[0])) as error:
        call()
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    assert snapshot(scene) == before
    return str(error.value)


def two_channel_net():
    net = torch.nn.Conv3d(2, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 0.01
        net.bias[1] = -0.01 * THRESHOLD
    return net.eval()


def card_model(folder, net, inputs):
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.ts"
    torch.jit.save(torch.jit.script(net), str(model))
    card = {
        "name": "bright",
        "inputs": [{"name": f"channel {i}"} for i in range(inputs)],
        "roi_size": [16, 16, 16],
        "labels": [{"value": 1, "name": "bright tissue"}],
    }
    (folder / "model.ts.json").write_text(json.dumps(card))
    return model


def test_card_says_one_channel_but_network_takes_two(scene, head_node, tmp_path):
    model = card_model(tmp_path, two_channel_net(), inputs=1)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], model, device="cpu"),
        "expects 2 input channel(s)",
        "given 1",
        "model card",
    )


def test_card_says_two_channels_but_network_takes_one(scene, head_node, second_node, tmp_path):
    model = card_model(tmp_path, threshold_net(), inputs=2)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node, second_node], model, device="cpu"),
        "expects 1 input channel(s)",
        "given 2",
    )


def test_card_model_given_the_wrong_number_of_volumes(scene, head_node, second_node, tmp_path):
    model = card_model(tmp_path, threshold_net(), inputs=1)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node, second_node], model, device="cpu"),
        "takes 1 input volume",
        "got 2",
    )


def test_bundle_network_takes_one_channel_but_two_volumes_given(scene, head_node, second_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    record_trust(bundle)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node, second_node], bundle, device="cpu"),
        "expects 1 input channel(s)",
        "given 2",
    )


def test_bundle_network_takes_two_channels_but_one_volume_given(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["in_channels"] = 2
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(two_channel_net().state_dict(), bundle / "models" / "model.pt")
    record_trust(bundle)
    for inferer in ("bundle", "medai"):
        refused(
            scene,
            lambda inferer=inferer: MedAISegLogic(scene).segment_with_model(
                [head_node], bundle, device="cpu", inferer=inferer
            ),
            "expects 2 input channel(s)",
            "given 1",
        )


def test_bundle_metadata_channel_count_is_checked_before_running(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["inputs"] = {"image": {"num_channels": 4}}
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    record_trust(bundle)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu"),
        "expects 4 input channel(s)",
        "metadata.json",
        "given 1",
    )


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("weights", ["pt", "ts"])
def test_truncated_bundle_weights(scene, head_node, tmp_path, weights):
    bundle = write_bundle(tmp_path / "bundle", weights=weights)
    record_trust(bundle)
    path = bundle / "models" / f"model.{weights}"
    truncate(path)
    message = refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu"),
        str(path),
        "truncated or corrupt",
        "re-download or re-export",
    )
    assert "not trusted" not in message


def test_truncated_bundle_weights_are_reported_before_trust_is_asked(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    truncate(bundle / "models" / "model.pt")
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu"),
        "truncated or corrupt",
    )


def test_truncated_torchscript_with_card(scene, head_node, tmp_path):
    model = card_model(tmp_path, threshold_net(), inputs=1)
    truncate(model)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], model, device="cpu"),
        str(model),
        "truncated or corrupt",
        "re-download or re-export",
    )


def test_weights_that_do_not_fit_the_network_def(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    torch.save(torch.nn.Conv3d(1, 3, 1).state_dict(), bundle / "models" / "model.pt")  # 3 classes, config says 2
    record_trust(bundle)
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu"),
        "do not fit the bundle's network_def",
        "model.pt",
    )


def test_model_pt_without_tensors(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    torch.save({"epoch": 3}, bundle / "models" / "model.pt")
    refused(
        scene,
        lambda: MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu"),
        "holds no network weights",
    )
