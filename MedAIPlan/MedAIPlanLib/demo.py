"""``medai demo`` step of MedAIPlan: an optimised 5-beam photon plan on the phantom's lesion.

Coarse settings keep it quick on a CPU: 10 mm bixels (grid grown 5 mm around the lesion), 3 mm
dose grid, 100 iterations.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.demo import DemoStepSkipped, axial_slice

from .logic import MedAIPlanLogic, default_machine_path

DEMO_PRESCRIPTION_GY = 60.0


def run(context) -> None:
    """Plan on ``context.ct_node`` / ``context.structures_node`` (target ``lesion``), save the dose."""
    try:
        default_machine_path()
    except ValueError as error:
        raise DemoStepSkipped(str(error)) from error
    logic = MedAIPlanLogic(context.scene)
    names = [i.name for i in bridge.segment_infos(context.structures_node)]
    target = "lesion" if "lesion" in names else "liver"
    dose = logic.plan(context.ct_node, context.structures_node, target, DEMO_PRESCRIPTION_GY, fractions=30,
                      gantry_angles=[0, 72, 144, 216, 288], bixel_width_mm=10.0, dose_grid_mm=3.0, margin_mm=5.0,
                      max_iter=100,
                      device="cpu", progress=context.progress.sub(0.0, 1.0) if hasattr(context.progress, "sub") else None)
    path = bridge.save_node(dose, context.output_dir / "plan_dose.nrrd")
    context.nodes["plan_dose"] = dose
    info = logic.last_info
    metrics = info["metrics"]
    context.report.outputs["plan_dose"] = str(path)
    context.report.metrics["plan"] = {
        "target": target, "prescription_Gy": DEMO_PRESCRIPTION_GY,
        "target_D95_Gy": metrics[target]["D95_Gy"], "target_Dmean_Gy": metrics[target]["Dmean_Gy"],
        "organ_Dmean_Gy": {n: m.get("Dmean_Gy") for n, m in metrics.items() if n != target},
        "num_bixels": info["num_bixels"], "timings_s": info["timings"],
    }
    array, _ = bridge.array_from_volume(dose)
    k = context.nodes.get("display_k", array.shape[0] // 2)
    ct, _ = bridge.array_from_volume(context.ct_node)
    overlay = np.where(array >= 0.3 * DEMO_PRESCRIPTION_GY, array, 0)
    context.add_panel(f"Plan dose (Gy), {target} {DEMO_PRESCRIPTION_GY:g} Gy", axial_slice(ct, k),
                      axial_slice(overlay, k), vmin=-400, vmax=400, overlay_cmap="jet")
