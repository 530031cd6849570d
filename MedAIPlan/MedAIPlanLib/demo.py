"""``medai demo`` step of MedAIPlan: an optimised 5-beam photon plan on the phantom's lesion.

Coarse settings keep it quick on a CPU: 10 mm bixels (grid grown 5 mm around the lesion), 3 mm
dose grid, 100 iterations.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge, figures
from MedAICommonLib.synthetic.demo import DemoStepSkipped

from MedAIPlanLib.logic import MedAIPlanLogic, default_machine_path

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
    dose = logic.plan(
        context.ct_node,
        context.structures_node,
        target,
        DEMO_PRESCRIPTION_GY,
        fractions=30,
        gantry_angles=[0, 72, 144, 216, 288],
        bixel_width_mm=10.0,
        dose_grid_mm=3.0,
        margin_mm=5.0,
        max_iter=100,
        device="cpu",
        progress=context.progress.sub(0.0, 1.0) if hasattr(context.progress, "sub") else None,
    )
    path = bridge.save_node(dose, context.output_dir / "plan_dose.nrrd")
    context.nodes["plan_dose"] = dose
    info = logic.last_result
    metrics = info.metrics
    context.report.outputs["plan_dose"] = str(path)
    context.report.metrics["plan"] = {
        "target": target,
        "prescription_Gy": DEMO_PRESCRIPTION_GY,
        "target_D95_Gy": metrics[target]["D95_Gy"],
        "target_Dmean_Gy": metrics[target]["Dmean_Gy"],
        "organ_Dmean_Gy": {n: m.get("Dmean_Gy") for n, m in metrics.items() if n != target},
        "num_bixels": info.num_bixels,
        "timings_s": info.timings,
    }
    add_dose_panel(
        context, dose, target, DEMO_PRESCRIPTION_GY, "axial", f"Plan dose, {target} {DEMO_PRESCRIPTION_GY:g} Gy"
    )


ISODOSE_PERCENT = (50, 80, 95, 100)


def add_dose_panel(context, dose_node, target: str, prescription_gy: float, plane: str, title: str) -> None:
    """Overview panel: the dose (resampled onto the CT grid) on the CT through the target's largest section in
    ``plane``, with the structures outlined and the :data:`ISODOSE_PERCENT` isodose lines of the prescription."""
    ct, geometry = bridge.array_from_volume(context.ct_node)
    dose, dose_geometry = bridge.array_from_volume(dose_node)
    on_ct = bridge.resample_array(np.asarray(dose, np.float32), dose_geometry, geometry.with_shape(ct.shape))
    masks = context.nodes.get("truth_masks") or bridge.segment_masks(context.structures_node, geometry)[0]
    shown = {n: m for n, m in masks.items() if n != "body"}
    colors = figures.structure_colors(masks)
    index = figures.largest_section(masks[target], geometry, plane)
    levels = [p / 100.0 * prescription_gy for p in ISODOSE_PERCENT]
    context.add_panel(
        title,
        lambda fig, ax: figures.draw_anatomy_panel(
            fig,
            ax,
            ct,
            geometry,
            plane,
            index,
            title,
            structures=shown,
            colors=colors,
            dose_kji=on_ct,
            isodose_gy=levels,
            prescription_gy=prescription_gy,
        ),
        plane=plane,
        index=index,
        structure=target,
    )
