"""MedAISeg's run settings: each worker job's command line is generated from a settings dataclass, and the
real ``medai`` parsers read it back into equal settings."""

from __future__ import annotations

import dataclasses
from typing import get_args

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.cli.main import build_parser
from MedAICommonLib.geometry import Geometry
from MedAISegLib.preprocess_worker_logic import WORKER_METHODS, denoise_job
from MedAISegLib.run_settings import (
    DenoiseMethod,
    DenoiseSettings,
    ExplainMethod,
    ExplainSettings,
    FineTuneSettings,
    ModelSegmentationSettings,
    Network,
    TrainingSettings,
)
from MedAISegLib.worker_logic import explain_job, fine_tune_job, segment_with_model_job, train_job

INPUTS = {
    "segment": ["in.nrrd", "out.seg.nrrd"],
    "denoise": ["in.nrrd", "out.nrrd"],
    "train": ["--images", "a.nrrd", "--labels", "a.seg.nrrd", "--output", "bundle"],
    "fine-tune": ["in.nrrd", "in.seg.nrrd", "--output", "bundle"],
    "explain": ["in.nrrd", "--output", "saliency.nrrd"],
}
CASES = [
    ("segment", ModelSegmentationSettings("models/spleen", "cpu", tta=True, trust_bundle=True)),
    ("segment", ModelSegmentationSettings("model.ts")),
    ("denoise", DenoiseSettings("nlm", "cuda")),
    ("train", TrainingSettings(7, "dynunet", (1.25, 1.5, 2.0), "cpu", "models/start")),
    ("train", TrainingSettings()),
    ("fine-tune", FineTuneSettings("models/spleen", 3, 1e-4, "cpu")),
    ("explain", ExplainSettings("models/spleen", "spleen", "gradient", "cpu", trust_bundle=True)),
    ("explain", ExplainSettings("model.ts")),
]


def _subparser(command: str):
    commands = next(a for a in build_parser(command)._actions if a.dest == "command")
    return commands.choices[command]


@pytest.mark.parametrize(("command", "settings"), CASES)
def test_the_command_parses_the_generated_options_back_into_equal_settings(command, settings):
    args = _subparser(command).parse_args([*INPUTS[command], *settings.to_cli_args()])
    assert type(settings).from_namespace(args) == settings


@pytest.mark.parametrize(
    ("command", "cls"),
    [
        ("segment", ModelSegmentationSettings),
        ("denoise", DenoiseSettings),
        ("train", TrainingSettings),
        ("fine-tune", FineTuneSettings),
        ("explain", ExplainSettings),
    ],
)
def test_the_settings_defaults_are_the_command_defaults(command, cls):
    actions = {a.dest: a for a in _subparser(command)._actions}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            dest = f.metadata["option"].lstrip("-").replace("-", "_")
            default = actions[dest].default
            assert (tuple(default) if isinstance(default, list) else default) == f.default, (command, f.name)


def test_the_mode_types_are_the_command_choices():
    def choices(command, dest):
        return set(next(a for a in _subparser(command)._actions if a.dest == dest).choices)

    assert set(get_args(DenoiseMethod)) == choices("denoise", "method") == set(WORKER_METHODS)
    assert set(get_args(ExplainMethod)) == choices("explain", "method")
    assert set(get_args(Network)) == choices("train", "network")


def _nodes(scene):
    geometry = Geometry(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3), space="RAS")
    volume = bridge.create_volume(scene, np.zeros((8, 8, 8), np.float32), geometry, "ct")
    labels = np.zeros((8, 8, 8), np.uint16)
    labels[2:5, 2:5, 2:5] = 1
    segmentation = bridge.create_segmentation(scene, labels, geometry, [SegmentInfo(1, "spleen")], "labels")
    return volume, segmentation


def test_the_panel_jobs_run_the_settings_they_are_given(scene, tmp_path):
    volume, labels = _nodes(scene)
    model, bundle = str(tmp_path / "model"), str(tmp_path / "bundle")

    def read(job, command, cls):
        assert job.args[0] == command
        return cls.from_namespace(_subparser(command).parse_args(job.args[1:]))

    job = segment_with_model_job(scene, [volume, volume], model, "cpu", flip_tta=True, uncertainty=True)
    assert read(job, "segment", ModelSegmentationSettings) == ModelSegmentationSettings(model, "cpu", True)
    assert _subparser("segment").parse_args(job.args[1:]).extra_input == ["{in:channel1}"]
    job = denoise_job(scene, volume, "anisotropic", "cpu")
    assert read(job, "denoise", DenoiseSettings) == DenoiseSettings("anisotropic", "cpu")
    job = train_job(scene, [volume], [labels], bundle, "unet", 5, 2.5, "cpu", init_bundle=model)
    assert read(job, "train", TrainingSettings) == TrainingSettings(5, "unet", (2.5, 2.5, 2.5), "cpu", model)
    job = fine_tune_job(scene, volume, labels, model, bundle, epochs=4, device="cpu")
    assert read(job, "fine-tune", FineTuneSettings) == FineTuneSettings(model, 4, device="cpu")
    job = explain_job(scene, volume, model, "cpu", segment="spleen", method="gradcam")
    assert read(job, "explain", ExplainSettings) == ExplainSettings(model, "spleen", "gradcam", "cpu")
