"""A trained bundle in use: segmenting, fine-tuning, export and saliency on generated phantoms (MedAISeg issue 4).

Fast tests use 32³ phantoms at 2 mm, a small SegResNet (8 filters), 24³ patches and one torch
thread; the bundle they export is run by ``medai segment --model BUNDLE_DIR`` unchanged and
scored on phantoms from seeds never used in training.
"""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantom_training import one_thread, segment_dice  # noqa: F401  (one_thread: autouse fixture)
from scipy.ndimage import binary_dilation

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import Geometry
from MedAISegLib.inference.export import export_compressed, load_bundle_network
from MedAISegLib.learning.fine_tune import adapt_to_labels, load_initial_model
from MedAISegLib.learning.phantom_cases import (
    make_phantom_case,
    make_phantom_cases,
    make_two_lesion_case,
    write_phantom_cases,
)
from MedAISegLib.learning.training import TrainingConfig, dice_per_class, preprocess_for_bundle, train_and_export
from MedAISegLib.logic import MedAISegLogic
from MedAISegLib.training_logic import MedAITrainingLogic
from MedAISegLib.worker_logic import fine_tune_job

SMALL = ["--spacing", "2", "2", "2", "--roi", "24", "24", "24", "--features", "8", "--learning-rate", "3e-3"]
DARK = {"contrast": (-120.0, -60.0)}


@pytest.fixture(scope="module", autouse=True)
def trust_store(tmp_path_factory):
    """A private bundle trust store: the bundles exported here are trusted by the export itself."""
    previous = os.environ.get("MEDAI_TRUST_STORE")
    store = tmp_path_factory.mktemp("trust") / "trusted_bundles.json"
    os.environ["MEDAI_TRUST_STORE"] = str(store)
    yield store
    if previous is None:
        os.environ.pop("MEDAI_TRUST_STORE", None)
    else:
        os.environ["MEDAI_TRUST_STORE"] = previous


@pytest.fixture(autouse=True)
def isolated_trust_store(trust_store, monkeypatch):
    """This module's store for every test (instead of conftest's per-test one), so the module's trained
    bundle stays trusted in the tests that run it; still never the user's store."""
    monkeypatch.setenv("MEDAI_TRUST_STORE", str(trust_store))
    return trust_store


@pytest.fixture(scope="module")
def bright_bundle(tmp_path_factory):
    """A SegResNet trained through ``medai train`` on 8 bright phantoms (seeds 0-7), 8 epochs."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("train")
    images, labels = write_phantom_cases(folder / "cases", range(8))
    bundle, report = folder / "bundle", folder / "train.json"
    code = main(
        [
            "train",
            "--images",
            *images,
            "--labels",
            *labels,
            "--output",
            str(bundle),
            "--epochs",
            "8",
            "--network",
            "segresnet",
            *SMALL,
            "--report",
            str(report),
        ]
    )
    assert code == 0
    return bundle, json.loads(report.read_text())


def test_trained_bundle_segments_new_phantoms_through_medai_segment(bright_bundle, tmp_path, scene):
    bundle, report = bright_bundle
    state = torch.load(str(bundle / "models" / "model.pt"), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "label 1"}
    assert metadata["medai"]["spacing_mm"] == [2.0, 2.0, 2.0]
    with open(bundle / "logs" / "training_curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (bundle / "logs" / "training_curves.png").stat().st_size > 1000
    assert report["metrics"]["best_val_dice"] == max(float(r["val_dice"]) for r in rows)
    scores = segment_dice(bundle, [1000, 1001, 1002], tmp_path, scene)
    assert np.mean(scores) >= 0.7, scores


@pytest.mark.slow  # end-to-end fine-tuning (10-25 s)
def test_fine_tune_on_another_contrast_improves_dice_there(bright_bundle, tmp_path, scene):
    bundle, _ = bright_bundle
    before = segment_dice(bundle, [2000, 2001], tmp_path, scene, **DARK)
    volumes, segmentations = [], []
    for index, (image, label) in enumerate(make_phantom_cases(range(300, 306), **DARK)):
        volumes.append(bridge.sitk_to_volume(image, scene, f"dark {index}"))
        labels, geometry = bridge.sitk_to_array(label)
        segmentations.append(
            bridge.create_segmentation(scene, labels, geometry, [bridge.SegmentInfo(1, "lesion")], f"dark {index} seg")
        )
    logic = MedAITrainingLogic(scene)
    config = TrainingConfig(
        features=8, spacing_mm=(2, 2, 2), roi=(24, 24, 24), epochs=8, learning_rate=3e-3, val_fraction=0.34
    )
    logic.train(volumes, segmentations, tmp_path / "dark", config, init_bundle=bundle, device="cpu")
    after = segment_dice(tmp_path / "dark", [2000, 2001], tmp_path, scene, **DARK)
    assert np.mean(after) > np.mean(before) + 0.3, (before, after)
    assert np.mean(after) >= 0.6, after
    metadata = json.loads((tmp_path / "dark" / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "lesion"
    table = scene.GetNodeByID(logic.last_result.table)
    assert table.GetNumberOfRows() == 8


def _torchscript_with_card(bundle, folder, label="label 1", architecture=False):
    """``model.ts`` (scripted from ``bundle``) and its card ``model.ts.json`` in ``folder``."""
    network, definition, _ = load_bundle_network(bundle)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.ts"
    torch.jit.save(torch.jit.script(network.eval()), str(path))
    card = {
        "name": "bright lesions",
        "labels": [{"value": 1, "name": label}],
        "spacing_mm": [2.0, 2.0, 2.0],
        "normalization": {"type": "zscore"},
        "roi_size": [24, 24, 24],
        "axis_order": "ijk",
    }
    if architecture:
        card["network_def"] = definition
    (folder / "model.ts.json").write_text(json.dumps(card))
    return path


@pytest.mark.slow  # end-to-end fine-tuning (10-25 s)
def test_fine_tune_from_torchscript_with_card_on_another_contrast(bright_bundle, tmp_path, scene):
    bundle, _ = bright_bundle
    model = _torchscript_with_card(bundle, tmp_path / "ts")
    before = segment_dice(model, [2000, 2001], tmp_path, scene, **DARK)
    images, labels = write_phantom_cases(tmp_path / "dark_cases", range(300, 306), **DARK)
    out = tmp_path / "dark_from_ts"
    assert (
        main(
            [
                "train",
                "--images",
                *images,
                "--labels",
                *labels,
                "--output",
                str(out),
                "--epochs",
                "8",
                "--init-bundle",
                str(model),
                "--learning-rate",
                "3e-3",
                "--val-fraction",
                "0.34",
            ]
        )
        == 0
    )
    assert (out / "models" / "model.ts").exists()
    assert not (out / "models" / "model.pt").exists()
    after = segment_dice(out, [2000, 2001], tmp_path, scene, **DARK)
    assert np.mean(after) > np.mean(before) + 0.3, (before, after)
    assert np.mean(after) >= 0.6, after
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert metadata["medai"]["training"]["init_model"] == "torchscript"
    assert metadata["medai"]["spacing_mm"] == [2.0, 2.0, 2.0]
    # a bare TorchScript model has no hooks: its explanation falls back to gradient x input
    image, truth = make_phantom_case(4001)
    logic = MedAITrainingLogic(scene)
    node = logic.explain(bridge.sitk_to_volume(image, scene, "bright"), model, device="cpu")
    assert node.GetName() == "bright saliency label 1"
    assert logic.last_result.method == "gradient"
    saliency, _ = bridge.array_from_volume(node)
    mask = sitk.GetArrayFromImage(truth) > 0
    assert saliency[mask].mean() > 2.0 * saliency[~binary_dilation(mask, iterations=3)].mean()


def test_card_naming_its_architecture_is_rebuilt_and_takes_a_new_label_set(bright_bundle, tmp_path, scene):
    bundle, _ = bright_bundle
    model = _torchscript_with_card(bundle, tmp_path / "ts", label="lesion", architecture=True)
    initial = load_initial_model(model)
    assert not initial.scripted
    assert "SegResNet" in initial.source
    probe = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        assert torch.allclose(initial.network.eval()(probe), torch.jit.load(str(model))(probe), atol=1e-5)
        reference = initial.network(probe)
        network, definition = adapt_to_labels(initial, {1: "lesion", 2: "dark lesion"})
        logits = network.eval()(probe)
    assert definition["out_channels"] == 3
    assert logits.shape[1] == 3
    assert torch.allclose(logits[:, :2], reference, atol=1e-5)  # background and 'lesion' carried over
    image, truth = make_two_lesion_case(0)
    volume = bridge.sitk_to_volume(image, scene, "two")
    labels, geometry = bridge.sitk_to_array(truth)
    seg = bridge.create_segmentation(
        scene, labels, geometry, [bridge.SegmentInfo(1, "lesion"), bridge.SegmentInfo(2, "dark lesion")], "two seg"
    )
    MedAITrainingLogic(scene).fine_tune_on_case(volume, seg, model, tmp_path / "three", epochs=1, device="cpu")
    assert (tmp_path / "three" / "models" / "model.pt").exists()
    node = MedAISegLogic(scene).segment_with_model(volume, tmp_path / "three", device="cpu")
    assert [s.name for s in bridge.segment_infos(node)] == ["lesion", "dark lesion"]


def test_torchscript_output_convolution_is_replaced_for_a_new_label_set(bright_bundle, tmp_path):
    from monai.networks.nets import UNet

    bundle, _ = bright_bundle
    initial = load_initial_model(_torchscript_with_card(bundle, tmp_path / "ts", label="lesion"))
    assert initial.scripted
    probe = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        reference = initial.network(probe)
        network, definition = adapt_to_labels(initial, {1: "lesion", 2: "dark lesion"})
        logits = network(probe)
    assert definition is None
    assert logits.shape[1] == 3
    assert torch.allclose(logits[:, :2], reference, atol=1e-5)
    cases = [make_two_lesion_case(seed) for seed in range(3)]
    config = TrainingConfig(epochs=2, val_fraction=0.34, labels={1: "lesion", 2: "dark lesion"})
    result = train_and_export(cases, tmp_path / "three", config, init_bundle=initial)
    assert result.labels == {1: "lesion", 2: "dark lesion"}
    assert (tmp_path / "three" / "models" / "model.ts").exists()
    metadata = json.loads((tmp_path / "three" / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    # a residual output block (UNet with residual units) has no replaceable final convolution
    unet = UNet(3, 1, 2, channels=[4, 8, 16], strides=[2, 2], num_res_units=1)
    torch.jit.save(torch.jit.script(unet.eval()), str(tmp_path / "unet.ts"))
    (tmp_path / "unet.ts.json").write_text(
        json.dumps({"labels": [{"value": 1, "name": "lesion"}], "roi_size": [16, 16, 16]})
    )
    with pytest.raises(ValueError, match="output convolution"):
        adapt_to_labels(load_initial_model(tmp_path / "unet.ts"), {1: "lesion", 2: "dark lesion"})


@pytest.mark.slow  # end-to-end fine-tuning (10-25 s)
def test_fine_tune_on_this_case_then_run_again(bright_bundle, tmp_path, scene):
    """The Slicer loop: segment, correct in the Segment Editor, fine-tune on the case, segment again."""
    bundle, _ = bright_bundle
    model = tmp_path / "my model"
    shutil.copytree(bundle, model)  # a copy elsewhere is not trusted until the user (or a MedAI export) says so
    image, truth_image = make_phantom_case(2100, **DARK)
    volume = bridge.sitk_to_volume(image, scene, "dark")
    truth, geometry = bridge.sitk_to_array(truth_image)
    seg_logic = MedAISegLogic(scene)
    first = seg_logic.segment_with_model(volume, model, device="cpu", trust_bundle=True)
    corrected = bridge.create_segmentation(
        scene, truth, geometry, [bridge.SegmentInfo(1, "label 1")], "dark corrected"
    )  # what the user drew in the Segment Editor

    def dice(node):
        try:
            labels, _, _ = bridge.labelmap_from_segmentation(node, reference=geometry)
        except bridge.BridgeError:  # empty segmentation
            labels = np.zeros_like(truth)
        return dice_per_class(labels, truth, [1])[1]

    before = dice(first)
    weights = next((model / "models").glob("model.*"))
    stamp = weights.stat().st_mtime_ns
    # the panel's "Fine-tune on this case": MedAITrainingLogic.fine_tune_on_case in a worker process
    # (`medai fine-tune`), updating the bundle in place; the scene gains no node
    count = scene.GetNumberOfNodes()
    assert (
        fine_tune_job(scene, volume, corrected, str(model), str(model), epochs=15, device="cpu").run(timeout=600) == {}
    )
    assert scene.GetNumberOfNodes() == count
    assert weights.stat().st_mtime_ns != stamp
    second = seg_logic.segment_with_model(volume, model, device="cpu", output_node=first)  # no trust prompt
    assert second is first
    after = dice(second)
    assert after > before + 0.3, (before, after)
    assert after >= 0.7, (before, after)


@pytest.mark.slow  # three exports run end to end (about 8 s)
def test_fp16_and_onnx_exports_agree_with_fp32(bright_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    bundle, _ = bright_bundle
    samples = [preprocess_for_bundle(image, bundle) for image, _ in make_phantom_cases([3000, 3001])]
    result = export_compressed(bundle, samples, fp16=True, onnx=True, device="cpu")
    assert result["onnx"]["agreement"] >= 0.995
    assert result["fp16_torchscript"]["agreement"] >= 0.995
    assert (bundle / "models" / "model.onnx").exists()
    assert (bundle / "models" / "model_fp16.ts").exists()
    assert result["onnx"]["seconds"] > 0


def test_medai_export_command_writes_report(bright_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    bundle, _ = bright_bundle
    src = tmp_path / "sample.nii.gz"
    sitk.WriteImage(make_phantom_case(3100)[0], str(src))
    report = tmp_path / "export.json"
    assert (
        main(["export", str(bundle), "--sample", str(src), "--onnx", "--device", "cpu", "--report", str(report)]) == 0
    )
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["onnx"]["agreement"] >= 0.995
    assert "fp16_torchscript" not in metrics


def test_gradcam_and_saliency_concentrate_on_the_segment(bright_bundle, scene):
    bundle, _ = bright_bundle
    image, truth = make_phantom_case(4000)
    volume = bridge.sitk_to_volume(image, scene, "case")
    logic = MedAITrainingLogic(scene)
    mask = sitk.GetArrayFromImage(truth) > 0
    far = ~binary_dilation(mask, iterations=3)
    node = logic.explain(volume, bundle, "label 1", device="cpu")
    assert node.GetName() == "case Grad-CAM label 1"
    assert logic.last_result.method == "gradcam"
    assert logic.last_result.layer == "conv_final.2:input"
    heat, _ = bridge.array_from_volume(node)
    assert heat.shape == mask.shape
    assert heat[mask].mean() > 3.0 * heat[far].mean(), (heat[mask].mean(), heat[far].mean())
    node = logic.explain(volume, bundle, "label 1", device="cpu", method="gradient")
    assert node.GetName() == "case saliency label 1"
    saliency, _ = bridge.array_from_volume(node)
    assert saliency[mask].mean() > 2.0 * saliency[far].mean()
    with pytest.raises(ValueError, match="not in"):
        logic.explain(volume, bundle, "liver")
    with pytest.raises(ValueError, match="Layer"):
        logic.explain(volume, bundle, "label 1", layer="no_such_layer")


@pytest.mark.slow
def test_slow_torchscript_fine_tuned_to_a_new_label_set_segments_both_classes(bright_bundle, tmp_path, scene):
    """Bright-lesion TorchScript model -> bright 'lesion' (kept) + new 'dark lesion', 12 epochs on 8 cases."""
    bundle, _ = bright_bundle
    model = _torchscript_with_card(bundle, tmp_path / "ts", label="lesion")
    config = TrainingConfig(epochs=12, learning_rate=3e-3, val_fraction=0.25, labels={1: "lesion", 2: "dark lesion"})
    train_and_export([make_two_lesion_case(seed) for seed in range(8)], tmp_path / "two", config, init_bundle=model)
    scores = {1: [], 2: []}
    for seed in range(50, 54):
        image, truth = make_two_lesion_case(seed)
        node = MedAISegLogic(scene).segment_with_model(
            bridge.sitk_to_volume(image, scene, f"two {seed}"), tmp_path / "two", device="cpu"
        )
        assert [s.name for s in bridge.segment_infos(node)] == ["lesion", "dark lesion"]
        labels, _, infos = bridge.labelmap_from_segmentation(node, reference=Geometry.from_sitk(truth).to_space("RAS"))
        values = {info.name: info.label for info in infos}
        reference = sitk.GetArrayFromImage(truth)
        for value, name in ((1, "lesion"), (2, "dark lesion")):
            scores[value].append(dice_per_class(labels == values[name], reference == value, [True])[True])
    assert np.mean(scores[1]) >= 0.7, scores
    assert np.mean(scores[2]) >= 0.7, scores
