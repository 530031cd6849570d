"""Plan-evaluation scenarios (shared with the Slicer self-test) and the demo step."""

from __future__ import annotations

from pathlib import Path

from MedAICommonLib.progress import Progress
from MedAICommonLib.report import Report
from MedAICommonLib.synthetic.demo import DemoContext, prepare_inputs
from MedAIPlanLib import evaluation_demo, evaluation_scenarios


def test_dvh_linear_gradient(scene):
    m = evaluation_scenarios.scenario_dvh_linear_gradient(scene)
    assert m["Dmax_point_Gy"] >= m["Dmax_Gy"] >= m["D2_Gy"] > m["D50_Gy"]


def test_gamma_shifted_dose(scene):
    out = evaluation_scenarios.scenario_gamma_shifted_dose(scene)
    assert out["loose"] > out["strict"]


def test_rt_round_trip(scene):
    out = evaluation_scenarios.scenario_rt_round_trip(scene)
    assert set(out) == {"PTV", "OAR"}


def test_isodose_sphere(scene):
    out = evaluation_scenarios.scenario_isodose_sphere(scene)
    assert out["volume_cc"] > 0


def test_demo_step_without_plan_dose(scene, tmp_path: Path):
    """With no dose from the planning step the demo makes an analytic one and reports the target's DVH."""
    context = DemoContext(scene, tmp_path, Report("demo"), Progress())
    prepare_inputs(context)
    evaluation_demo.run(context)
    metrics = context.report.metrics["evaluation"]
    assert metrics["target"] == "lesion"
    assert 0.5 * 60 < metrics["target_D95_Gy"] <= 60.0
    assert 0 < metrics["CI_Paddick"] <= 1.0
    assert Path(context.report.outputs["plan_report"]).stat().st_size > 10_000
    assert Path(context.report.outputs["plan_report_pdf"]).read_bytes().startswith(b"%PDF-")
