"""MedAISeg's step of ``medai demo``: denoise the phantom CT, segment the liver (region growing from
a seed) and the lesion (threshold + post-processing), detect the lesion, evaluate against the
phantom's structures, and add panels to the overview."""

from __future__ import annotations

import numpy as np

from MedAICommonLib import bridge, figures

from MedAISegLib.logic import MedAISegLogic
from MedAISegLib.results import DenoiseResult, EvaluationResult, LesionResult


def _seed_ras(structures_node, name):
    """A seed inside a structure: the RAS position of its voxel nearest to its centroid (as a user would click)."""
    mask, geometry = bridge.segment_mask(structures_node, name)
    voxels = np.argwhere(mask)
    centre = voxels.mean(axis=0)
    nearest = voxels[np.argmin(np.linalg.norm(voxels - centre, axis=1))]
    return geometry.index_to_point(nearest[::-1].astype(float))


def _reference(context, name: str):
    """The phantom's ``name`` segment alone, so the evaluation pairs it with the one segment the step made."""
    mask, geometry = bridge.segment_mask(context.structures_node, name)
    return bridge.create_segmentation_from_masks(context.scene, {name: mask}, geometry, f"phantom {name}")


def run(context) -> None:
    """Run the segmentation step on ``context.ct_node`` / ``context.structures_node``."""
    logic = MedAISegLogic(context.scene)
    out = context.output_dir / "seg"
    ct, structures = context.ct_node, context.structures_node
    with context.report.timed("seg.denoise"):
        denoised = logic.denoise(ct, "nlm", device="auto", patch_radius=1, search_radius=1)
    device = logic.last_result_as(DenoiseResult).device
    with context.report.timed("seg.liver"):
        liver = logic.region_growing(
            denoised, _seed_ras(structures, "liver")[None], "connected", lower=40, upper=85, segment_name="liver"
        )
        liver = logic.postprocess(liver, keep_largest=True, fill_holes=False, output_node=liver)
    with context.report.timed("seg.lesion"):
        lesion = logic.threshold(denoised, lower=85, upper=300, segment_name="lesion", color=(0.9, 0.1, 0.1))
        lesion = logic.postprocess(lesion, min_island_mm3=500.0, fill_holes=True, output_node=lesion)
        markups, lesion_table = logic.detect_lesions(lesion, intensity_node=ct)
        lesions = logic.last_result_as(LesionResult).lesions
    with context.report.timed("seg.evaluate"):
        logic.evaluate(_reference(context, "liver"), liver)
        liver_metrics = logic.last_result_as(EvaluationResult).metrics["liver"]
        logic.evaluate(_reference(context, "lesion"), lesion)
        lesion_metrics = logic.last_result_as(EvaluationResult).metrics["lesion"]
    paths = {
        "denoised": bridge.save_node(denoised, out / "phantom_ct_nlm.nrrd"),
        "liver": bridge.save_node(liver, out / "liver.seg.nrrd"),
        "lesion": bridge.save_node(lesion, out / "lesion.seg.nrrd"),
        "lesion_points": bridge.save_node(markups, out / "lesions.mrk.json"),
        "lesion_table": bridge.save_node(lesion_table, out / "lesions.csv"),
    }
    context.report.outputs.update({f"seg.{k}": str(v) for k, v in paths.items()})
    keep = ("dice", "jaccard", "hd95_mm", "asd_mm", "sensitivity", "volume_difference_percent")
    context.report.metrics["seg"] = {
        "device": device,
        "liver": {k: float(liver_metrics[k]) for k in keep},
        "lesion": {k: float(lesion_metrics[k]) for k in keep},
        "lesions_found": len(lesions),
        "lesion_centroid_ras_mm": [float(c) for c in lesions[0]["centroid_ras"]] if lesions else None,
        "lesion_volume_mm3": float(lesions[0]["volume_mm3"]) if lesions else None,
    }
    context.nodes.update({"seg.denoised": denoised, "seg.liver": liver, "seg.lesion": lesion})
    _add_panels(context, denoised, liver, lesion, liver_metrics["dice"], lesion_metrics["dice"])


def _add_panels(context, denoised, liver, lesion, liver_dice: float, lesion_dice: float) -> None:
    """Denoised CT; liver and lesion, each on its own largest axial cross-section, MedAI against the truth."""
    array, geometry = bridge.array_from_volume(denoised)
    truth = context.nodes.get("truth_masks") or bridge.segment_masks(context.structures_node, geometry)[0]
    found = {
        "liver": bridge.segment_mask(liver, "liver", geometry)[0],
        "lesion": bridge.segment_mask(lesion, "lesion", geometry)[0],
    }
    colors = figures.structure_colors(truth)
    k = context.nodes.get("display_k", array.shape[0] // 2)
    context.add_panel(
        "NLM denoised CT",
        lambda fig, ax: figures.draw_anatomy_panel(fig, ax, array, geometry, "axial", k, "NLM denoised CT"),
        plane="axial",
        index=k,
    )
    for name, dice in (("liver", liver_dice), ("lesion", lesion_dice)):
        index = figures.largest_section(truth[name], geometry, "axial")
        title = f"{name.capitalize()} segmentation (Dice {dice:.2f}), largest section"
        context.add_panel(
            title,
            lambda fig, ax, name=name, index=index, title=title: figures.draw_anatomy_panel(
                fig,
                ax,
                array,
                geometry,
                "axial",
                index,
                title,
                structures={name: found[name]},
                colors=colors,
                reference={name: truth[name]},
            ),
            plane="axial",
            index=index,
            structure=name,
        )
