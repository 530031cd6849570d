"""Training, fine-tuning, export and saliency on generated phantoms (MedAISeg issue 4).

Fast tests use 32³ phantoms at 2 mm, a small SegResNet (8 filters), 24³ patches and one torch
thread; the bundle they export is run by ``medai segment --model BUNDLE_DIR`` unchanged and
scored on phantoms from seeds never used in training.
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import add_common_options, main
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.progress import Progress
from MedAISegLib import training_commands
from MedAISegLib.export import export_compressed, load_bundle_network
from MedAISegLib.phantom_cases import make_phantom_case, make_phantom_cases, write_phantom_cases
from MedAISegLib.training import TrainingConfig, dice_per_class, preprocess_for_bundle, train
from MedAISegLib.training_logic import MedAITrainingLogic

SMALL = ["--spacing", "2", "2", "2", "--roi", "24", "24", "24", "--features", "8", "--learning-rate", "3e-3"]
DARK = {"contrast": (-120.0, -60.0)}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bright_bundle(tmp_path_factory):
    """A SegResNet trained through ``medai train`` on 8 bright phantoms (seeds 0-7), 8 epochs."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("train")
    images, labels = write_phantom_cases(folder / "cases", range(8))
    bundle, report = folder / "bundle", folder / "train.json"
    code = main(["train", "--images", *images, "--labels", *labels, "--output", str(bundle), "--epochs", "8",
                 "--network", "segresnet", *SMALL, "--report", str(report)])
    assert code == 0
    return bundle, json.loads(report.read_text())


def _segment_dice(bundle, seeds, tmp_path, scene, **kwargs) -> list[float]:
    """Dice of ``medai segment --model bundle`` against the truth of new phantoms."""
    scores = []
    for seed in seeds:
        image, truth = make_phantom_case(seed, **kwargs)
        src, out = tmp_path / f"new{seed}.nii.gz", tmp_path / f"new{seed}.seg.nrrd"
        sitk.WriteImage(image, str(src))
        assert main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu"]) == 0
        seg = bridge.load_segmentation(scene, out)
        reference = Geometry.from_sitk(truth).to_space("RAS")
        try:
            labels, _, _ = bridge.labelmap_from_segmentation(seg, reference=reference)
        except bridge.BridgeError:  # Slicer cannot export an all-empty segmentation: nothing was found
            labels = np.zeros(reference.shape_kji, np.uint8)
        scores.append(dice_per_class(labels, sitk.GetArrayFromImage(truth), [1])[1])
    return scores


def test_register_adds_train_and_export_with_the_issue_flags():
    parser = argparse.ArgumentParser()
    training_commands.register(parser.add_subparsers(dest="command"), add_common_options)
    args = parser.parse_args(["train", "--images", "a.nii", "b.nii", "--labels", "la.nii", "lb.nii", "--output",
                              "out", "--epochs", "3", "--network", "unet", "--report", "r.json"])
    assert (args.images, args.labels, args.output, args.epochs, args.network) == \
        (["a.nii", "b.nii"], ["la.nii", "lb.nii"], "out", 3, "unet")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--images", "a", "--labels", "b", "--output", "o", "--network", "resnet"])


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
    scores = _segment_dice(bundle, [1000, 1001, 1002], tmp_path, scene)
    assert np.mean(scores) >= 0.7, scores


def test_fine_tune_on_another_contrast_improves_dice_there(bright_bundle, tmp_path, scene):
    bundle, _ = bright_bundle
    before = _segment_dice(bundle, [2000, 2001], tmp_path, scene, **DARK)
    volumes, segmentations = [], []
    for index, (image, label) in enumerate(make_phantom_cases(range(300, 306), **DARK)):
        volumes.append(bridge.sitk_to_volume(image, scene, f"dark {index}"))
        labels, geometry = bridge.sitk_to_array(label)
        segmentations.append(bridge.create_segmentation(scene, labels, geometry,
                                                        [bridge.SegmentInfo(1, "lesion")], f"dark {index} seg"))
    logic = MedAITrainingLogic(scene)
    config = TrainingConfig(features=8, spacing_mm=(2, 2, 2), roi=(24, 24, 24), epochs=8, learning_rate=3e-3,
                            val_fraction=0.34)
    logic.train(volumes, segmentations, tmp_path / "dark", config, init_bundle=bundle, device="cpu")
    after = _segment_dice(tmp_path / "dark", [2000, 2001], tmp_path, scene, **DARK)
    assert np.mean(after) > np.mean(before) + 0.3, (before, after)
    assert np.mean(after) >= 0.6, after
    metadata = json.loads((tmp_path / "dark" / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "lesion"
    table = scene.GetNodeByID(logic.last_info["table"])
    assert table.GetNumberOfRows() == 8


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
    assert main(["export", str(bundle), "--sample", str(src), "--onnx", "--device", "cpu",
                 "--report", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["onnx"]["agreement"] >= 0.995
    assert "fp16_torchscript" not in metrics


def test_saliency_concentrates_on_the_segment(bright_bundle, scene):
    bundle, _ = bright_bundle
    image, truth = make_phantom_case(4000)
    volume = bridge.sitk_to_volume(image, scene, "case")
    node = MedAITrainingLogic(scene).explain(volume, bundle, "label 1", device="cpu")
    saliency, geometry = bridge.array_from_volume(node)
    assert node.GetName() == "case saliency label 1"
    assert saliency.shape == sitk.GetArrayFromImage(image).shape
    mask = sitk.GetArrayFromImage(truth) > 0
    assert saliency[mask].mean() > 2.0 * saliency[~mask].mean()
    with pytest.raises(ValueError, match="not in"):
        MedAITrainingLogic(scene).explain(volume, bundle, "liver")


def test_cancel_keeps_best_model_and_resume_continues(tmp_path):
    cases = make_phantom_cases(range(3))
    config = TrainingConfig(features=4, spacing_mm=(2, 2, 2), roi=(16, 16, 16), epochs=4, samples_per_case=1,
                            val_fraction=0.34, augment=False)
    progress = Progress()

    def stop_after_two(row):
        if row["epoch"] == 2:
            progress.cancel()

    first = train(cases, tmp_path, config, progress=progress, on_epoch=stop_after_two)
    assert first.stopped == "cancelled"
    assert first.epochs_run == 2
    assert first.best_dice == max(r["val_dice"] for r in first.history)
    config.resume = True
    second = train(cases, tmp_path, config)
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    checkpoint = torch.load(str(tmp_path / "checkpoint.pt"), weights_only=True)
    assert checkpoint["epoch"] == 4


def test_same_seed_same_training(tmp_path):
    cases = make_phantom_cases(range(2))
    config = TrainingConfig(network="unet", features=4, spacing_mm=(2, 2, 2), roi=(16, 16, 16), epochs=2,
                            samples_per_case=1, val_fraction=0.5)
    a = train(cases, tmp_path / "a", config)
    b = train(cases, tmp_path / "b", config)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    for (key, x), y in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(x, y), key


def test_errors_name_the_problem(tmp_path, scene):
    image, label = make_phantom_case(0)
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label)
    with pytest.raises(ValueError, match="empty"):
        train([(image, empty)], tmp_path, TrainingConfig(epochs=1))
    with pytest.raises(ValueError, match="Unknown network"):
        train([(image, label)], tmp_path, TrainingConfig(network="resnet", epochs=1))
    volume = bridge.sitk_to_volume(image, scene, "v")
    with pytest.raises(ValueError, match="one segmentation per volume"):
        MedAITrainingLogic(scene).train([volume], [], tmp_path / "b")
    assert main(["train", "--images", "a.nii", "--labels", "a.nii", "b.nii", "--output", str(tmp_path)]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("network", ["segresnet", "unet"])
def test_slow_training_reaches_dice_090_on_new_phantoms(network, tmp_path, scene):
    images, labels = write_phantom_cases(tmp_path / "cases", range(12))
    bundle = tmp_path / network
    assert main(["train", "--images", *images, "--labels", *labels, "--output", str(bundle), "--epochs", "25",
                 "--network", network, "--spacing", "2", "2", "2", "--roi", "24", "24", "24", "--features", "8",
                 "--learning-rate", "5e-3", "--patience", "25", "--report", str(tmp_path / "r.json")]) == 0
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    scores = _segment_dice(bundle, [5000, 5001, 5002, 5003, 5004], tmp_path, scene)
    assert np.mean(scores) >= 0.90, (scores, metrics, (bundle / "logs" / "training_curves.csv").read_text())
    network_module, definition, _ = load_bundle_network(bundle)
    assert network.lower() in definition["_target_"].lower()
