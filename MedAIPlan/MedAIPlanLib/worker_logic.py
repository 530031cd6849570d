"""MedAIPlan's heavy run (dose-influence matrix + optimisation) as a worker job for the panel.

See :mod:`MedAICommonLib.scene_job`: CT and structures are written to a private folder, ``medai plan``
runs in a separate process, and the dose is read back, marked as a SlicerRT dose volume, only on success.
"""

from __future__ import annotations

from MedAICommonLib.scene_job import JobOutput, SceneJob

from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume


def plan_job(scene, ct_node, structures_node, target: str, prescription_gy: float, fractions: int = 1,
             gantry_angles=(0.0,), bixel_width_mm: float = 5.0, dose_grid_mm: float = 3.0, device: str = "auto",
             output_dose_node=None, auto_dose_grid: bool = False) -> SceneJob:
    """``medai plan CT SEGMENTATION``: the optimised dose (Gy, on the CT grid) as a dose volume node.

    The worker estimates the memory first and stops with the numbers when the plan would not fit, or,
    with ``auto_dose_grid``, coarsens the dose grid until it does."""
    if ct_node is None or structures_node is None:
        raise ValueError("Select the CT volume and the structure set (segmentation) to plan on.")
    if not target:
        raise ValueError("Choose the target segment to plan for.")
    gantry = ",".join(f"{float(a):g}" for a in gantry_angles)
    # the same plan attributes MedAIPlanLogic.plan sets (RTPLAN export rebuilds the beams from them;
    # without IsocenterLPS the isocentre is the target centroid again, as in the worker)
    parameters = {"Target": target, "PrescriptionGy": float(prescription_gy), "Fractions": int(fractions),
                  "GantryAngles": gantry, "CouchAngles": ",".join("0" for _ in gantry_angles),
                  "BixelWidthMm": float(bixel_width_mm), "DoseGridMm": float(dose_grid_mm)}

    def mark(node):
        mark_as_dose_volume(node)
        for key, value in parameters.items():
            node.SetAttribute(f"MedAIPlan.{key}", str(value))

    args = ["plan", "{in:ct}", "{in:structures}", "--target", target, "--prescription", f"{prescription_gy:g}",
            "--fractions", str(int(fractions)), "--gantry-angles", gantry,
            "--bixel-width", f"{bixel_width_mm:g}", "--dose-grid", f"{dose_grid_mm:g}", "--device", device,
            "--output-dose", "{out:dose}"]
    if auto_dose_grid:
        args.append("--auto-dose-grid")
    return SceneJob(scene, args, {"ct": ct_node, "structures": structures_node},
                    [JobOutput("dose", "dose.nrrd", f"{ct_node.GetName()} dose", "volume", node=output_dose_node,
                               after_load=mark)])
