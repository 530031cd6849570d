"""MedAIPlan's heavy run (dose-influence matrix + optimisation) as a worker job for the panel.

See :mod:`MedAICommonLib.jobs.scene_job`: CT and structures are written to a private folder, ``medai plan``
runs in a separate process, and the dose is read back, marked as a SlicerRT dose volume, only on success.
"""

from __future__ import annotations

from MedAICommonLib.devices import Device
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume
from MedAIPlanLib.plan_settings import PlanSettings


def plan_job(
    scene,
    ct_node,
    structures_node,
    target: str,
    prescription_gy: float,
    fractions: int = 1,
    gantry_angles=(0.0,),
    bixel_width_mm: float = 5.0,
    dose_grid_mm: float = 3.0,
    device: Device = "auto",
    output_dose_node=None,
    auto_dose_grid: bool = False,
) -> SceneJob:
    """``medai plan CT SEGMENTATION``: the optimised dose (Gy, on the CT grid) as a dose volume node.

    The worker estimates the memory first and stops with the numbers when the plan would not fit, or,
    with ``auto_dose_grid``, coarsens the dose grid until it does. See :func:`plan_settings_job`."""
    settings = PlanSettings(
        target=target,
        prescription_gy=float(prescription_gy),
        fractions=int(fractions),
        gantry_angles=tuple(gantry_angles),
        bixel_width_mm=float(bixel_width_mm),
        dose_grid_mm=float(dose_grid_mm),
        device=device,
        auto_dose_grid=bool(auto_dose_grid),
    )
    return plan_settings_job(scene, ct_node, structures_node, settings, output_dose_node)


def plan_settings_job(scene, ct_node, structures_node, settings: PlanSettings, output_dose_node=None) -> SceneJob:
    """``medai plan CT SEGMENTATION`` with the options :meth:`PlanSettings.to_cli_args` generates; the dose node
    read back records the settings (:meth:`PlanSettings.to_node_attributes`) as the in-process Logic does,
    without ``IsocenterLPS`` unless one was given (the RTPLAN export then takes the target centroid again,
    as the worker did)."""
    if ct_node is None or structures_node is None:
        raise ValueError("Select the CT volume and the structure set (segmentation) to plan on.")
    if not settings.target:
        raise ValueError("Choose the target segment to plan for.")

    def mark(node):
        mark_as_dose_volume(node)
        settings.write_to_node(node)

    args = ["plan", "{in:ct}", "{in:structures}", *settings.to_cli_args(), "--output-dose", "{out:dose}"]
    return SceneJob(
        scene,
        args,
        {"ct": ct_node, "structures": structures_node},
        [JobOutput("dose", "dose.nrrd", f"{ct_node.GetName()} dose", "volume", node=output_dose_node, after_load=mark)],
    )
