"""``medai demo``'s overview and the plan reports, checked on the rendered figures and files."""

from __future__ import annotations

import re

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.progress import Progress
from MedAICommonLib.report import Report
from MedAICommonLib.synthetic.demo import DemoContext, overview_figure, prepare_inputs
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAIPlanLib import evaluation_demo
from MedAISegLib import demo as seg_demo


def _colorbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if hasattr(ax, "_colorbar")]


def test_overview_panels_show_what_they_name(scene, tmp_path):
    """Segmentation and evaluation steps: every slice panel has a colour bar in HU or Gy and the four orientation
    letters; the liver panel is on a slice where the phantom's liver is (found here from the phantom itself); the
    DVH panel's lines are the cumulative DVH of the dose (computed here from the voxels)."""
    import matplotlib.pyplot as plt

    context = DemoContext(scene, tmp_path, Report("demo"), Progress())
    prepare_inputs(context)
    seg_demo.run(context)
    evaluation_demo.run(context)
    fig = overview_figure(context)
    panels = dict(zip([p["title"] for p in context.panels], fig.axes[: len(context.panels)]))
    assert sorted(_colorbar_labels(fig)) == sorted(["CT (HU)"] * 4 + ["Dose (Gy)"])
    letters = {"axial": {"R", "L", "A", "P"}, "coronal": {"R", "L", "S", "I"}}
    for panel in context.panels:
        if "plane" in panel:
            assert {t.get_text() for t in panels[panel["title"]].texts} == letters[panel["plane"]]

    truth = make_ct_phantom().labels == 5
    (liver_panel,) = [p for p in context.panels if p.get("structure") == "liver"]
    ax = panels[liver_panel["title"]]
    z = float(re.search(r"axial S (-?\d+\.\d) mm", ax.get_title()).group(1))
    geometry = context.nodes["ct_geometry"]
    k = int(round(geometry.point_to_index(np.array([[0.0, 0.0, z]]))[0][2]))
    assert k == liver_panel["index"]
    assert truth[k].sum() == truth.sum(axis=(1, 2)).max() > 0
    assert {"liver (MedAI)", "liver (truth)"} <= {t.get_text() for t in ax.get_legend().get_texts()}

    (dvh_title,) = [t for t in panels if t.startswith("Cumulative DVH")]
    lines = {line.get_label(): line for line in panels[dvh_title].get_lines()}
    dose_node = scene.GetFirstNodeByName("demo analytic dose")  # no plan step here: the step's analytic dose
    dose, dose_geometry = bridge.array_from_volume(dose_node)
    lesion = bridge.segment_mask(context.structures_node, "lesion", dose_geometry.with_shape(dose.shape))[0]
    values = dose[lesion]
    x, y = lines["lesion"].get_data()
    for level in (10.0, 30.0, 45.0, 55.0):
        expected = 100.0 * np.mean(values >= level)
        assert abs(np.interp(level, x, y) - expected) < 1.5, level
    plt.close(fig)


def test_plan_report_pdf_pages_are_one_size(scene, tmp_path):
    """Three A4-landscape pages: every /MediaBox the same."""
    context = DemoContext(scene, tmp_path, Report("demo"), Progress())
    prepare_inputs(context)
    evaluation_demo.run(context)
    raw = (tmp_path / "plan_report.pdf").read_bytes()
    boxes = re.findall(rb"/MediaBox\s*\[([^\]]*)\]", raw)
    assert len(boxes) == 3
    assert len(set(boxes)) == 1
    width, height = (float(v) for v in boxes[0].split()[2:])
    assert abs(width - 841.9) < 1
    assert abs(height - 595.3) < 1


def test_logic_report_from_array_views_is_one_page_size(scene, tmp_path):
    """The plan Logic's own report path (array views, no true origin): A4-landscape pages, slices titled by index."""
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    context = DemoContext(scene, tmp_path, Report("demo"), Progress())
    prepare_inputs(context)
    dose = evaluation_demo.analytic_dose(context)
    logic = PlanEvaluationLogic(scene)
    result = logic.compute_dvh(
        dose, context.structures_node, prescription_gy=55.0, target_segment="lesion", oversampling=1
    )
    pdf = logic.write_report(tmp_path / "logic.pdf", dose, result, ct_node=context.ct_node, isodose_levels_gy=(30, 50))
    boxes = re.findall(rb"/MediaBox\s*\[([^\]]*)\]", pdf.read_bytes())
    assert len(boxes) == 3
    assert len(set(boxes)) == 1
    assert logic.write_report(tmp_path / "logic.png", dose, result, ct_node=context.ct_node).stat().st_size > 10_000
