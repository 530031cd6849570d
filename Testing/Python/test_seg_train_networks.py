"""DynUNet and SwinUNETR train, export and run through ``medai segment``; ROI checks; persistent cache.

Tiny settings (32³ phantoms at 2 mm, few steps, one torch thread): these tests check that each
network trains (its loss falls) and that the bundle it exports runs unchanged, not accuracy.
SwinUNETR (ROI 32³, feature size 12) takes seconds per step on a CPU, so its test is slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAISegLib.inference.explain import default_target_layer, explanation_map
from MedAISegLib.inference.export import load_bundle_network
from MedAISegLib.learning.phantom_cases import make_phantom_case, make_phantom_cases
from MedAISegLib.learning.training import TrainingConfig, preprocess_for_bundle, train, train_and_export


@pytest.fixture(autouse=True)
def setting(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAI_TRUST_STORE", str(tmp_path / "trusted_bundles.json"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train_export_segment(network, features, roi, epochs, tmp_path, scene, samples=2, cases=3, lr=1e-2):
    config = TrainingConfig(
        network=network,
        features=features,
        spacing_mm=(2, 2, 2),
        roi=roi,
        epochs=epochs,
        batch_size=2,
        samples_per_case=samples,
        learning_rate=lr,
        val_fraction=1 / cases,
        augment=False,
        patience=epochs,
    )
    bundle = tmp_path / network
    result = train_and_export(make_phantom_cases(range(cases)), bundle, config)
    assert result.epochs_run == epochs
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    image, truth = make_phantom_case(7000)
    source, output = tmp_path / "new.nii.gz", tmp_path / "new.seg.nrrd"
    sitk.WriteImage(image, str(source))
    assert main(["segment", str(source), str(output), "--model", str(bundle), "--device", "cpu"]) == 0
    node = bridge.load_segmentation(scene, output)
    assert [s.name for s in bridge.segment_infos(node)] == ["label 1"]
    _, definition, metadata = load_bundle_network(bundle)
    assert network in definition["_target_"].lower()
    assert metadata["medai"]["roi"] == list(roi)
    return bundle, image, truth


def test_dynunet_trains_exports_and_runs_through_medai_segment(tmp_path, scene):
    bundle, image, truth = _train_export_segment("dynunet", 4, (24, 24, 24), 3, tmp_path, scene, cases=2)
    network, _, _ = load_bundle_network(bundle)
    assert default_target_layer(network) == "output_block:input"
    heat = explanation_map(network, preprocess_for_bundle(image, bundle), 1, (24, 24, 24))
    assert heat.shape == (32, 32, 32)
    assert np.isfinite(heat).all()
    assert 0.0 <= heat.min() <= heat.max() <= 1.0


@pytest.mark.slow
def test_swinunetr_trains_exports_and_runs_through_medai_segment(tmp_path, scene):
    pytest.importorskip("einops")
    bundle, _, _ = _train_export_segment("swinunetr", 12, (32, 32, 32), 3, tmp_path, scene, samples=1, cases=3, lr=3e-3)
    network, definition, _ = load_bundle_network(bundle)
    assert definition["feature_size"] == 12
    assert default_target_layer(network) == "out:input"


def test_roi_that_does_not_fit_the_network_is_refused(tmp_path):
    cases = make_phantom_cases([0])
    with pytest.raises(ValueError, match="multiple of 32"):
        train(cases, tmp_path, TrainingConfig(network="swinunetr", roi=(48, 48, 48), epochs=1))
    with pytest.raises(ValueError, match="multiple of 8"):
        train(cases, tmp_path, TrainingConfig(network="dynunet", roi=(20, 20, 20), epochs=1))


def test_persistent_cache_is_written_once_and_reused(tmp_path):
    cases = make_phantom_cases(range(2))
    config = TrainingConfig(
        network="unet",
        features=4,
        spacing_mm=(2, 2, 2),
        roi=(16, 16, 16),
        epochs=2,
        samples_per_case=1,
        val_fraction=0.5,
        cache_dir=str(tmp_path / "cache"),
    )
    first = train(cases, tmp_path / "a", config)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 1  # one training case (the other is the validation case)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    second = train(cases, tmp_path / "b", config)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == stamps
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    json.dumps(second.history)  # curves stay plain numbers


def test_export_trusts_only_a_bundle_holding_nothing_but_its_own_configs(tmp_path, scene):
    from MedAISegLib.inference.bundle_trust import is_trusted
    from MedAISegLib.inference.export import build_network, export_bundle, network_definition
    from MedAISegLib.logic import MedAISegLogic

    definition = network_definition("unet", 1, 2, 4)
    network = build_network(definition)
    clean = export_bundle(tmp_path / "clean", network, definition, {1: "lesion"}, (2, 2, 2), (16, 16, 16))
    assert is_trusted(clean)
    (tmp_path / "mixed" / "scripts").mkdir(parents=True)
    (tmp_path / "mixed" / "scripts" / "hook.py").write_text("raise SystemExit('ran foreign code')\n")
    mixed = export_bundle(tmp_path / "mixed", network, definition, {1: "lesion"}, (2, 2, 2), (16, 16, 16))
    assert not is_trusted(mixed)
    volume = bridge.sitk_to_volume(make_phantom_case(0)[0], scene, "case")
    with pytest.raises(ValueError, match="not trusted"):
        MedAISegLogic(scene).segment_with_model(volume, mixed, device="cpu")
    node = MedAISegLogic(scene).segment_with_model(volume, clean, device="cpu")
    assert [s.name for s in bridge.segment_infos(node)] == ["lesion"]


def test_zoo_style_bundle_is_fine_tuned_with_its_own_preprocessing(tmp_path):
    from MedAISegLib.inference.bundle_trust import record_trust
    from MedAISegLib.inference.export import build_network, export_bundle, network_definition
    from MedAISegLib.learning.fine_tune import load_initial_model

    definition = network_definition("unet", 1, 2, 4)
    zoo = export_bundle(tmp_path / "zoo", build_network(definition), definition, {1: "spleen"}, (2, 2, 2), (16, 16, 16))
    config = json.loads((zoo / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"] = [  # as MONAI's spleen_ct_segmentation bundle writes it
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.5], "mode": "bilinear"},
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": -57,
            "a_max": 164,
            "b_min": 0,
            "b_max": 1,
            "clip": True,
        },
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    (zoo / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = json.loads((zoo / "configs" / "metadata.json").read_text())
    metadata.pop("medai")
    (zoo / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="not trusted"):  # edited configs: trusted again only by the user
        load_initial_model(zoo)
    record_trust(zoo)
    initial = load_initial_model(zoo)
    assert initial.spacing_mm == (2.0, 2.0, 2.5)
    assert initial.roi == (16, 16, 16)
    assert initial.axcodes == "RAS"
    assert initial.normalization == {
        "type": "window",
        "a_min": -57.0,
        "a_max": 164.0,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    }
    train_and_export(
        make_phantom_cases(range(2)), tmp_path / "tuned", TrainingConfig(epochs=1, samples_per_case=1), init_bundle=zoo
    )
    steps = json.loads((tmp_path / "tuned" / "configs" / "inference.json").read_text())["preprocessing"]["transforms"]
    window = next(step for step in steps if step["_target_"] == "ScaleIntensityRanged")
    assert (window["a_min"], window["a_max"], window["clip"]) == (-57.0, 164.0, True)
    assert next(step for step in steps if step["_target_"] == "Spacingd")["pixdim"] == [2.0, 2.0, 2.5]
