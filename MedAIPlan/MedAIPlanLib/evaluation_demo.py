"""Demo step of plan evaluation: DVH, metrics, isodose and a plan report on the plan step's dose.

Uses ``context.nodes["dose"]`` (or ``"plan_dose"``) when the planning step left one; otherwise makes a simple analytic
dose (a Gaussian around the lesion, 60 Gy peak) on the phantom so the step still shows something.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.demo import axial_slice

from .dose_volume import mark_as_dose_volume
from .evaluation_logic import PlanEvaluationLogic
from .plan_report import write_plan_report


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
    dose = (60.0 * np.exp(-r2 / (2 * 25.0 ** 2))).astype(np.float32)
    return mark_as_dose_volume(bridge.create_volume(context.scene, dose, geometry, "demo analytic dose"))


def run(context) -> None:
    """DVH + metrics + isodose on the dose node; plan reports (PNG, PDF); panels and report metrics."""
    dose_node = context.nodes.get("dose") or context.nodes.get("plan_dose") or analytic_dose(context)
    logic = PlanEvaluationLogic(context.scene, context.progress)
    names = [s.name for s in bridge.segment_infos(context.structures_node)]
    dose, geometry = bridge.array_from_volume(dose_node)
    # A plan's dose node records its target and prescription (MedAIPlan.* attributes); use them.
    target = dose_node.GetAttribute("MedAIPlan.Target") or ("lesion" if "lesion" in names else names[-1])
    recorded = dose_node.GetAttribute("MedAIPlan.PrescriptionGy")
    prescription = float(recorded) if recorded else (0.9 * float(dose.max()) if dose.max() > 0 else 1.0)
    result = logic.compute_dvh(dose_node, context.structures_node, v_doses_gy=(20.0,), prescription_gy=prescription,
                               target_segment=target, oversampling=1)
    models, legend, levels = logic.isodose(dose_node, (50, 80, 95), prescription)
    curves = {}
    for name, table in result.tables.items():
        cols = bridge.columns_from_table(table)
        curves[name] = (np.array(cols["Dose (Gy)"]), np.array(cols["Volume (%)"]))
    ct, _ = bridge.array_from_volume(context.ct_node)
    k = int(context.nodes.get("display_k", ct.shape[0] // 2))
    k = min(k, dose.shape[0] - 1)
    metrics = {n: m for n, m in result.metrics.items() if n != "plan"}
    report_path = write_plan_report(context.output_dir / "plan_report.png", axial_slice(ct, k) if ct.shape == dose.shape
                                    else axial_slice(ct), axial_slice(dose, k), curves, metrics,
                                    isodose_levels_gy=[lv.dose_gy for lv in levels],
                                    plan_indices=result.metrics.get("plan"))
    context.add_panel("Dose (Gy) and DVH target", axial_slice(ct, k) if ct.shape == dose.shape else axial_slice(dose, k),
                      axial_slice(dose, k), vmin=-400, vmax=400, overlay_cmap="jet")
    context.report.outputs["plan_report"] = str(report_path)
    pdf = logic.write_report(context.output_dir / "plan_report.pdf", dose_node, result, ct_node=context.ct_node,
                             title="MedAI plan report", isodose_levels_gy=[lv.dose_gy for lv in levels],
                             info={"Target": target, "Prescription (Gy)": round(prescription, 2)})
    context.report.outputs["plan_report_pdf"] = str(pdf)
    target_m = result.metrics.get(target, {})
    context.report.metrics["evaluation"] = {
        "target": target, "prescription_gy": prescription,
        "target_D95_Gy": target_m.get("D95_Gy"), "target_Dmean_Gy": target_m.get("Dmean_Gy"),
        "isodose_surfaces": len(models), **{k: float(v) for k, v in result.metrics.get("plan", {}).items()},
    }
    context.nodes["dvh_metrics"] = result.metrics_table
