"""``medai demo`` registration step: recover a rotated, shifted, intensity-remapped copy of the phantom CT."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedAICommonLib import bridge, figures
from MedAICommonLib.synthetic.demo import axial_slice

from MedAIRegisterLib.intensity import intensity_registration

from MedAIRegisterLib import quality, simulation
from MedAIRegisterLib.logic import MedAIRegisterLogic

ROTATION_DEG = (6.0, -4.0, 15.0)
TRANSLATION_MM = (12.0, -18.0, 10.0)


def run(context) -> None:
    """Make the moving volume, register it (MI, MedAI's CPU path), report TRE and MI/NCC, add overview panels."""
    scene = context.scene
    fixed = context.ct_node
    fixed_image = bridge.volume_to_sitk(fixed)
    moving_image, truth = simulation.moved_copy(fixed_image, ROTATION_DEG, TRANSLATION_MM)
    moving = bridge.sitk_to_volume(moving_image, scene, "phantom CT moved (remapped)")
    logic = MedAIRegisterLogic(scene, context.progress.sub(0.0, 1.0) if hasattr(context.progress, "sub") else None)
    transform_node = logic.register_volumes(fixed, moving, "rigid", "ct-mr-head", "cpu", resample=True)
    folder = context.output_dir / "registration"
    transform_path = bridge.save_node(transform_node, folder / "phantom_moved_to_ct.h5")
    body = sitk.GetArrayViewFromImage(fixed_image) > -500
    mask = sitk.GetImageFromArray(body.astype(np.uint8))
    mask.CopyInformation(fixed_image)
    tre = intensity_registration.target_registration_error(logic.last.itk_transform, truth,
                                                           simulation.grid_points(fixed_image, 3, mask))
    fixed_array, geometry = bridge.array_from_volume(fixed)
    after, _ = bridge.array_from_volume(logic.last_volume)
    before = sitk.GetArrayFromImage(sitk.Resample(moving_image, fixed_image, sitk.Transform(), sitk.sitkLinear,
                                                  float(np.min(sitk.GetArrayViewFromImage(moving_image)))))
    k = context.nodes.get("display_k", fixed_array.shape[0] // 2)
    png = quality.overlay_png(axial_slice(fixed_array, k), axial_slice(before, k), axial_slice(after, k),
                              folder / "overlay.png", "registration")
    for title, moved in (("Registration before: fixed/moving checkerboard", before),
                         (f"After: TRE {tre.mean():.2f} mm (max {tre.max():.2f})", after)):
        board = quality.checkerboard(_unit(fixed_array), _unit(moved))
        context.add_panel(title, lambda fig, ax, board=board, title=title: figures.draw_anatomy_panel(
            fig, ax, board, geometry, "axial", k, title, window=(0.0, 1.0),
            image_label="intensity (each image 1st-99th percentile to 0-1)"), plane="axial", index=k)
    context.report.outputs.update({"registration_transform": str(transform_path), "registration_overlay": str(png)})
    context.report.metrics["registration"] = dict(logic.last.metrics, tre_mean_mm=float(tre.mean()),
                                                  tre_max_mm=float(tre.max()))
    context.nodes["registration_transform"] = transform_node


def _unit(array: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(array, [1, 99])
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1)
