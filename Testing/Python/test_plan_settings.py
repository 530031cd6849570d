"""PlanSettings: one definition gives the ``medai plan`` options, the ``medai rt-export`` options and the
``MedAIPlan.*`` attributes of a plan's dose node; each reads back to the same settings."""

from __future__ import annotations

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.cli.main import build_parser
from MedAICommonLib.geometry import Geometry
from MedAIPlanLib.gamma_worker_logic import GammaSettings, gamma_job
from MedAIPlanLib.plan_settings import TG119_ANGLES, PlanSettings, is_plan_dose
from MedAIPlanLib.rt_worker_logic import exported_modalities, rt_export_args
from MedAIPlanLib.worker_logic import plan_job

FILES = ["ct.nrrd", "structures.seg.nrrd", "--output-dose", "dose.nrrd"]
NODE_FIELDS = (
    "target",
    "prescription_gy",
    "fractions",
    "gantry_angles",
    "couch_angles",
    "bixel_width_mm",
    "dose_grid_mm",
    "isocenter_lps",
)
SETTINGS = PlanSettings(
    target="PTV 60",
    prescription_gy=60.5,
    fractions=30,
    gantry_angles=(0, 72.5, 144, 216, 288),
    couch_angles=(0, 0, 10, 0, 350.25),
    bixel_width_mm=7.5,
    dose_grid_mm=2.5,
    isocenter_lps=(-12.25, 30.5, -0.75),
    device="cpu",
    auto_dose_grid=True,
    memory_limit_gb=12.5,
    hlut_path="ct.hlut",
    select_beams=4,
    iterations=90,
)


def _parse(*argv: str):
    return build_parser(argv[0]).parse_args(list(argv))


def test_medai_plan_parses_the_generated_options_back_into_equal_settings():
    args = _parse("plan", *FILES, *SETTINGS.to_cli_args())
    assert args.isocenter == "-12.25,30.5,-0.75"  # a negative first number still reaches the option
    assert PlanSettings.from_namespace(args) == SETTINGS
    precise = PlanSettings(target="t", prescription_gy=1 / 3, gantry_angles=(1 / 7,), bixel_width_mm=2 / 3)
    assert PlanSettings.from_namespace(_parse("plan", *FILES, *precise.to_cli_args())) == precise


def test_medai_plan_defaults_are_the_settings_defaults():
    """Options left out give the field defaults (the dose grid: 3 mm, what ``medai plan`` uses then)."""
    args = _parse("plan", *FILES, "--target", "PTV")
    assert PlanSettings.from_namespace(args) == PlanSettings(target="PTV")
    assert (
        PlanSettings(target="PTV").gantry_angles
        == TG119_ANGLES
        == tuple(float(a) for a in args.gantry_angles.split(","))
    )


@pytest.mark.parametrize(
    ("options", "text"),
    [
        (["--gantry-angles", "0,400"], "--gantry-angles: 400"),
        (["--couch-angles", "0,x"], "--couch-angles"),
        (["--isocenter", "1,2"], "--isocenter needs three numbers"),
    ],
)
def test_bad_option_values_are_refused_naming_the_option(options, text):
    args = _parse("plan", *FILES, "--target", "PTV", *options)
    with pytest.raises(ValueError, match=text):
        PlanSettings.from_namespace(args)


def _volume(scene, name="plan dose"):
    geometry = Geometry(spacing=(2.0, 2.0, 3.0), origin=(-20.0, -20.0, -15.0), direction=np.eye(3), space="RAS")
    return bridge.create_volume(scene, np.zeros((10, 20, 20), np.float32), geometry, name), geometry


def test_node_attributes_round_trip_on_a_volume_node(scene):
    node, _ = _volume(scene)
    assert PlanSettings.from_node_attributes(node) is None
    assert not is_plan_dose(node)
    SETTINGS.write_to_node(node)
    assert node.GetAttribute("MedAIPlan.PrescriptionGy") == "60.5"
    assert node.GetAttribute("MedAIPlan.GantryAngles") == "0,72.5,144,216,288"
    assert node.GetAttribute("MedAIPlan.IsocenterLPS") == "-12.25,30.50,-0.75"
    recorded = PlanSettings.from_node_attributes(node)
    assert recorded == PlanSettings(**{name: getattr(SETTINGS, name) for name in NODE_FIELDS})
    assert is_plan_dose(node)


def test_unset_values_are_recorded_as_such(scene):
    """A forward dose without prescription on the CT grid: PrescriptionGy "" and DoseGridMm "CT" read back as
    None; no isocentre means none is recorded; no couch angles are recorded as 0 per beam."""
    node, _ = _volume(scene)
    PlanSettings(target="PTV", gantry_angles=(0, 180), dose_grid_mm=None).write_to_node(node)
    assert (node.GetAttribute("MedAIPlan.PrescriptionGy"), node.GetAttribute("MedAIPlan.DoseGridMm")) == ("", "CT")
    assert node.GetAttribute("MedAIPlan.IsocenterLPS") is None
    recorded = PlanSettings.from_node_attributes(node)
    assert recorded == PlanSettings(target="PTV", gantry_angles=(0, 180), couch_angles=(0, 0), dose_grid_mm=None)
    assert (
        recorded.to_node_attributes()
        == PlanSettings(target="PTV", gantry_angles=(0, 180), dose_grid_mm=None).to_node_attributes()
    )


def test_the_rt_export_command_line_carries_the_recorded_beams(scene):
    """The panel's RTPLAN export: the dose node's attributes become ``medai rt-export`` options that its parser
    reads as the plan's beams."""
    node, geometry = _volume(scene)
    labels = np.zeros((10, 20, 20), np.uint16)
    labels[3:7, 8:12, 8:12] = 1
    structures = bridge.create_segmentation(scene, labels, geometry, [SegmentInfo(1, "PTV 60")], "structures")
    assert exported_modalities(node, structures) == ["RTSTRUCT", "RTDOSE"]
    SETTINGS.write_to_node(node)
    assert exported_modalities(node, structures) == ["RTSTRUCT", "RTPLAN", "RTDOSE"]
    args = _parse("rt-export", "out", *rt_export_args(node, structures))
    assert (args.dose, args.segmentation, args.target) == ("{in:dose}", "{in:structures}", "PTV 60")
    assert [float(a) for a in args.gantry.split(",")] == list(SETTINGS.gantry_angles)
    assert [float(a) for a in args.couch.split(",")] == list(SETTINGS.couch_angles)
    assert [float(a) for a in args.isocenter.split(",")] == list(SETTINGS.isocenter_lps)
    assert (args.bixel_width, args.prescription, args.fractions) == (7.5, 60.5, 30)
    node.SetAttribute("MedAIPlan.Target", "")
    with pytest.raises(ValueError, match="does not record its target"):
        rt_export_args(node, structures)


def test_the_plan_job_command_line_is_generated_from_the_settings(scene):
    ct, geometry = _volume(scene, "ct")
    labels = np.zeros((10, 20, 20), np.uint16)
    labels[3:7, 8:12, 8:12] = 1
    structures = bridge.create_segmentation(scene, labels, geometry, [SegmentInfo(1, "lesion")], "structures")
    job = plan_job(
        scene,
        ct,
        structures,
        target="lesion",
        prescription_gy=60.0,
        fractions=30,
        gantry_angles=(0, 120, 240),
        bixel_width_mm=10.0,
        dose_grid_mm=5.0,
        device="cpu",
        auto_dose_grid=True,
    )
    args = build_parser("plan").parse_args(job.args)
    assert (args.ct, args.segmentation, args.output_dose) == ("{in:ct}", "{in:structures}", "{out:dose}")
    expected = PlanSettings(
        target="lesion",
        prescription_gy=60.0,
        fractions=30,
        gantry_angles=(0, 120, 240),
        bixel_width_mm=10.0,
        dose_grid_mm=5.0,
        device="cpu",
        auto_dose_grid=True,
    )
    assert PlanSettings.from_namespace(args) == expected


def test_the_gamma_job_command_line_is_generated_from_its_settings(scene):
    reference, _ = _volume(scene, "reference")
    evaluated, _ = _volume(scene, "evaluated")
    job = gamma_job(scene, reference, evaluated, 2.0, 1.5, 12.5, local=True, device="cpu")
    args = build_parser("gamma").parse_args(job.args)
    assert GammaSettings.from_namespace(args) == GammaSettings(2.0, 1.5, 12.5, True, "cpu")
    assert (args.output_gamma, args.report) == ("{out:gamma}", "{dir}/gamma-report.json")
    assert GammaSettings.from_namespace(_parse("gamma", "reference.nrrd", "evaluated.nrrd")) == GammaSettings()
