"""Training runs on generated phantoms (MedAISeg issue 4): the ``medai train`` flags, cancel and resume,
a single case, the same seed twice, errors, and Dice 0.90 on new phantoms (slow).

Fast tests use 32³ phantoms at 2 mm, small networks and one torch thread."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from phantom_training import one_thread, segment_dice  # noqa: F401  (one_thread: autouse fixture)

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import add_common_options, main
from MedAICommonLib.progress import Progress
from MedAISegLib import training_commands
from MedAISegLib.inference.export import load_bundle_network
from MedAISegLib.learning.phantom_cases import make_phantom_case, make_phantom_cases, write_phantom_cases
from MedAISegLib.learning.training import TrainingConfig, train, train_and_export
from MedAISegLib.training_logic import MedAITrainingLogic


def test_register_adds_train_and_export_with_the_issue_flags():
    parser = argparse.ArgumentParser()
    training_commands.register(parser.add_subparsers(dest="command"), add_common_options)
    args = parser.parse_args(
        [
            "train",
            "--images",
            "a.nii",
            "b.nii",
            "--labels",
            "la.nii",
            "lb.nii",
            "--output",
            "out",
            "--epochs",
            "3",
            "--network",
            "unet",
            "--report",
            "r.json",
        ]
    )
    assert (args.images, args.labels, args.output, args.epochs, args.network) == (
        ["a.nii", "b.nii"],
        ["la.nii", "lb.nii"],
        "out",
        3,
        "unet",
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--images", "a", "--labels", "b", "--output", "o", "--network", "resnet"])


def test_cancel_keeps_best_model_and_resume_continues(tmp_path):
    cases = make_phantom_cases(range(3))
    config = TrainingConfig(
        features=4,
        spacing_mm=(2, 2, 2),
        roi=(16, 16, 16),
        epochs=4,
        samples_per_case=1,
        val_fraction=0.34,
        augment=False,
    )
    progress = Progress()

    def stop_after_two(row):
        if row["epoch"] == 2:
            progress.cancel()

    first = train(cases, tmp_path, config, progress=progress, on_epoch=stop_after_two)
    assert first.stopped == "cancelled"
    assert first.epochs_run == 2
    assert first.best_epoch_by == "validation Dice"
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in first.history)  # a Dice, never 1 - loss
    assert first.best_dice == max(r["val_dice"] for r in first.history)
    config.resume = True
    second = train(cases, tmp_path, config)
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    checkpoint = torch.load(str(tmp_path / "checkpoint.pt"), weights_only=True)
    assert checkpoint["epoch"] == 4


def test_one_case_reports_no_validation_dice_and_picks_the_lowest_loss(tmp_path, capsys):
    """Issue 14: with a single case nothing is held out, so there is no validation Dice (it used to
    report 1 - loss, e.g. -0.80); the best epoch is the lowest training loss, and the run says so."""
    images, labels = write_phantom_cases(tmp_path / "cases", [0])
    report_path = tmp_path / "one.json"
    assert (
        main(
            [
                "train",
                "--images",
                *images,
                "--labels",
                *labels,
                "--output",
                str(tmp_path / "one"),
                "--epochs",
                "3",
                "--spacing",
                "2",
                "2",
                "2",
                "--roi",
                "16",
                "16",
                "16",
                "--features",
                "4",
                "--no-augment",
                "--device",
                "cpu",
                "--report",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    metrics = report["metrics"]
    assert metrics["best_val_dice"] is None
    assert metrics["best_epoch_by"] == "training loss"
    with open(tmp_path / "one" / "logs" / "training_curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["val_dice"] for r in rows] == ["", "", ""]
    losses = [float(r["loss"]) for r in rows]
    assert metrics["best_epoch"] == 1 + int(np.argmin(losses))
    assert metrics["best_training_loss"] == pytest.approx(min(losses))
    assert any(w.startswith("no validation case") for w in report["warnings"])
    assert "medai train: warning: no validation case" in capsys.readouterr().err
    training = json.loads((tmp_path / "one" / "configs" / "metadata.json").read_text())["medai"]["training"]
    assert training["best_val_dice"] is None
    assert training["best_epoch_by"] == "training loss"


def test_fine_tune_on_one_case_claims_no_dice(tmp_path, scene):
    """ "Fine-tune on this case" has no held-out case either: the same honest figures, and a table without Dice."""
    cases = make_phantom_cases([0])
    config = TrainingConfig(
        features=4, spacing_mm=(2, 2, 2), roi=(16, 16, 16), epochs=2, samples_per_case=1, augment=False
    )
    with pytest.warns(UserWarning, match="no validation case"):
        first = train_and_export(cases, tmp_path / "model", config)
    image, truth = cases[0]
    volume = bridge.sitk_to_volume(image, scene, "case")
    labels, geometry = bridge.sitk_to_array(truth)
    seg = bridge.create_segmentation(scene, labels, geometry, [bridge.SegmentInfo(1, "label 1")], "case seg")
    logic = MedAITrainingLogic(scene)
    messages = []
    with pytest.warns(UserWarning, match="no validation case"):
        result = logic.fine_tune_on_case(
            volume,
            seg,
            tmp_path / "model",
            tmp_path / "tuned",
            epochs=2,
            device="cpu",
            progress=Progress(lambda text, fraction: messages.append(text)),
        )
    epochs = [m for m in messages if m.startswith("epoch")]
    assert epochs == [f"epoch {r['epoch']}: training loss {r['loss']:.3f} (no validation case)" for r in result.history]
    assert first.best_dice is None
    assert result.best_dice is None
    assert logic.last_result.best_val_dice is None
    assert logic.last_result.best_epoch_by == "training loss"
    assert logic.last_result.best_training_loss == min(r["loss"] for r in result.history)
    table = scene.GetNodeByID(logic.last_result.table)
    columns = [table.GetTable().GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    assert columns == ["epoch", "loss"]


def test_same_seed_same_training(tmp_path):
    cases = make_phantom_cases(range(2))
    config = TrainingConfig(
        network="unet",
        features=4,
        spacing_mm=(2, 2, 2),
        roi=(16, 16, 16),
        epochs=2,
        samples_per_case=1,
        val_fraction=0.5,
    )
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
    (tmp_path / "model.ts").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is a file"):
        MedAITrainingLogic(scene).fine_tune_on_case(volume, None, tmp_path / "model.ts", tmp_path / "model.ts")
    with pytest.raises(ValueError, match="No model card"):
        MedAITrainingLogic(scene).fine_tune_on_case(volume, None, tmp_path / "model.ts", tmp_path / "out")
    assert main(["train", "--images", "a.nii", "--labels", "a.nii", "b.nii", "--output", str(tmp_path)]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("network", ["segresnet", "unet"])
def test_slow_training_reaches_dice_090_on_new_phantoms(network, tmp_path, scene):
    images, labels = write_phantom_cases(tmp_path / "cases", range(12))
    bundle = tmp_path / network
    assert (
        main(
            [
                "train",
                "--images",
                *images,
                "--labels",
                *labels,
                "--output",
                str(bundle),
                "--epochs",
                "25",
                "--network",
                network,
                "--spacing",
                "2",
                "2",
                "2",
                "--roi",
                "24",
                "24",
                "24",
                "--features",
                "8",
                "--learning-rate",
                "5e-3",
                "--patience",
                "25",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    scores = segment_dice(bundle, [5000, 5001, 5002, 5003, 5004], tmp_path, scene)
    assert np.mean(scores) >= 0.90, (scores, metrics, (bundle / "logs" / "training_curves.csv").read_text())
    network_module, definition, _ = load_bundle_network(bundle)
    assert network.lower() in definition["_target_"].lower()
