"""RegistrationSettings: the ``medai register`` options written once; the panel's worker command line is
generated from it and the real parser reads it back."""

from __future__ import annotations

import dataclasses
from typing import get_args

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import build_parser
from MedAICommonLib.geometry import Geometry
from MedAIRegisterLib.intensity.intensity_backends import DEVICES
from MedAIRegisterLib.intensity.intensity_registration import METRICS, PRESETS
from MedAIRegisterLib.registration_settings import (
    Metric,
    Preset,
    RegistrationDevice,
    RegistrationSettings,
    Transform,
)
from MedAIRegisterLib.worker_logic import register_job

FILES = ["fixed.nrrd", "moving.nrrd", "--output-transform", "t.h5"]


def _register_parser():
    parser = build_parser("register")
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices["register"]


def test_the_mode_types_are_the_command_choices():
    actions = {a.dest: a for a in _register_parser()._actions}
    assert set(get_args(Transform)) == set(actions["transform"].choices)
    assert set(get_args(Preset)) == set(actions["preset"].choices) == {"auto", *PRESETS}
    assert set(get_args(RegistrationDevice)) == set(actions["device"].choices) == set(DEVICES)
    assert set(get_args(Metric)) == set(actions["metric"].choices) == set(METRICS)
    defaults = RegistrationSettings()
    for f in dataclasses.fields(RegistrationSettings):
        assert actions[f.name].default == getattr(defaults, f.name), f.name


@pytest.mark.parametrize(
    "settings",
    [
        RegistrationSettings(),
        RegistrationSettings("bspline", "ct-mr-head", "simpleitk", "correlation", 12.5),
        RegistrationSettings("affine", "pet-ct", "torch-cpu", None, 100 / 3),
    ],
)
def test_medai_register_parses_the_generated_options_back_into_equal_settings(settings):
    args = _register_parser().parse_args([*FILES, *settings.to_cli_args()])
    assert RegistrationSettings.from_namespace(args) == settings


def test_the_panel_job_command_line_is_generated_from_the_settings(scene):
    geometry = Geometry(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3), space="RAS")
    fixed = bridge.create_volume(scene, np.zeros((8, 8, 8), np.float32), geometry, "fixed")
    moving = bridge.create_volume(scene, np.zeros((8, 8, 8), np.float32), geometry, "moving")
    parser = build_parser("register")
    custom = register_job(scene, fixed, moving, "bspline", "custom", "cpu", sampling_percentage=5.0)
    args = parser.parse_args(custom.args)
    assert (args.fixed, args.moving, args.output_volume) == ("{in:fixed}", "{in:moving}", "{out:volume}")
    assert RegistrationSettings.from_namespace(args) == RegistrationSettings("bspline", "ct-ct", "cpu", "mattes", 5.0)
    plain = register_job(scene, fixed, moving, "rigid", "mr-mr-brain", "auto", metric="correlation", resample=False)
    args = parser.parse_args(plain.args)
    assert args.output_volume is None
    assert RegistrationSettings.from_namespace(args) == RegistrationSettings("rigid", "mr-mr-brain", "auto")
