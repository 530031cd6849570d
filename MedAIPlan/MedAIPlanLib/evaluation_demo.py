"""Demo step of plan evaluation: DVH, metrics, isodose and a plan report on the plan step's dose.

Uses ``context.nodes["dose"]`` (or ``"plan_dose"``) when the planning step left one; otherwise makes a simple analytic
dose (a Gaussian around the lesion, 60 Gy peak) on the phantom so the step still shows something.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge, figures

from MedAIPlanLib.demo import add_dose_panel
from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume
from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic
from MedAIPlanLib.plan_report_nodes import dvh_curves, write_plan_report_for_nodes
from MedAIPlanLib.plan_settings import PlanSettings


def analytic_dose(context):
    """A 60 Gy Gaussian dose (sigma 25 mm) centred on the phantom lesion, on the CT grid, as a dose node."""
    ct, geometry = bridge.array_from_volume(context.ct_node)
    labels, lgeo, infos = bridge.labelmap_from_segmentation(context.structures_node, geometry.with_shape(ct.shape))
    lesion = next((s.label for s in infos if s.name == "lesion"), None)
    kk, jj, ii = np.indices(ct.shape)
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    points = geometry.index_to_point(ijk)
    mask = labels == lesion if lesion else np.zeros(ct.shape, bool)
    center = points[mask.ravel()].mean(axis=0) if mask.any() else points.mean(axis=0)
    r2 = ((points - center) ** 2).sum(axis=1).reshape(ct.shape)
    dose = (60.0 * np.exp(-r2 / (2 * 25.0**2))).astype(np.float32)
    return mark_as_dose_volume(bridge.create_volume(context.scene, dose, geometry, "demo analytic dose"))


def run(context) -> None:
    """DVH + metrics + isodose on the dose node; plan reports (PNG, PDF); panels (coronal dose, the DVH itself)
    and report metrics."""
    dose_node = context.nodes.get("dose") or context.nodes.get("plan_dose") or analytic_dose(context)
    logic = PlanEvaluationLogic(context.scene, context.progress)
    names = [s.name for s in bridge.segment_infos(context.structures_node)]
    dose, geometry = bridge.array_from_volume(dose_node)
    # A plan's dose node records its target and prescription (PlanSettings as MedAIPlan.* attributes); use them.
    recorded = PlanSettings.from_node_attributes(dose_node)
    target = (recorded.target if recorded else "") or ("lesion" if "lesion" in names else names[-1])
    prescription = (
        recorded.prescription_gy
        if recorded and recorded.prescription_gy
        else (0.9 * float(dose.max()) if dose.max() > 0 else 1.0)
    )
    result = logic.compute_dvh(
        dose_node,
        context.structures_node,
        v_doses_gy=(20.0,),
        prescription_gy=prescription,
        target_segment=target,
        oversampling=1,
    )
    models, legend, levels = logic.isodose(dose_node, (50, 80, 95), prescription)
    report_args = {
        "ct_node": context.ct_node,
        "structures_node": context.structures_node,
        "target": target,
        "prescription_gy": prescription,
        "isodose_levels_gy": [lv.dose_gy for lv in levels],
        "title": "MedAI plan report",
        "info": {"Target": target, "Prescription (Gy)": round(prescription, 2)},
    }
    report_path = write_plan_report_for_nodes(context.output_dir / "plan_report.png", dose_node, result, **report_args)
    pdf = write_plan_report_for_nodes(context.output_dir / "plan_report.pdf", dose_node, result, **report_args)
    context.report.outputs.update({"plan_report": str(report_path), "plan_report_pdf": str(pdf)})
    add_dose_panel(context, dose_node, target, prescription, "coronal", f"Dose, coronal through {target}")
    curves = {name: tuple(np.asarray(c, float) for c in curve) for name, curve in dvh_curves(result).items()}
    colors = figures.structure_colors(context.nodes.get("truth_masks") or curves)
    title = f"Cumulative DVH ({target} prescribed {prescription:g} Gy)"

    def draw_dvh(fig, ax):
        figures.draw_dvh(ax, curves, colors, prescription, legend_size=7)
        ax.set_title(title, fontsize=9)

    context.add_panel(title, draw_dvh, kind="dvh", curves=curves)
    target_m = result.metrics.get(target, {})
    context.report.metrics["evaluation"] = {
        "target": target,
        "prescription_gy": prescription,
        "target_D95_Gy": target_m.get("D95_Gy"),
        "target_Dmean_Gy": target_m.get("Dmean_Gy"),
        "isodose_surfaces": len(models),
        **{k: float(v) for k, v in result.metrics.get("plan", {}).items()},
    }
    context.nodes["dvh_metrics"] = result.metrics_table
