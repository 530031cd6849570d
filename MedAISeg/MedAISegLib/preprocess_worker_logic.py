"""MedAISeg's preprocessing as a worker job for the panel: denoising a CT can take minutes on the CPU.

``medai denoise`` runs in a separate process (:mod:`MedAICommonLib.jobs.scene_job`); the filtered volume
comes back as the node the in-process Logic would make (``"<input> <method>"``, or the chosen output
node). The light intensity mappings ("histogram", "normalize") have no worker command and stay in
the Slicer process (:func:`runs_in_worker`).
"""

from __future__ import annotations

from typing import cast

from MedAICommonLib.devices import Device
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

from MedAISegLib.run_settings import DenoiseMethod, DenoiseSettings

WORKER_METHODS = ("nlm", "anisotropic", "curvature", "clahe", "n4")


def runs_in_worker(method: str) -> bool:
    """Whether the panel runs preprocessing ``method`` in a worker process (the filters that take long)."""
    return method in WORKER_METHODS


def denoise_job(scene, input_node, method: str, device: Device = "auto", output_node=None) -> SceneJob:
    """``medai denoise INPUT OUTPUT --method METHOD --device DEVICE`` with the CLI's default settings
    (those of :meth:`MedAISegLib.logic.MedAISegLogic.denoise`); the output is a scalar volume node."""
    if input_node is None:
        raise ValueError("Select the input volume to preprocess.")
    if not runs_in_worker(method):
        raise ValueError(f"Preprocessing {method!r} has no worker command; choose one of {', '.join(WORKER_METHODS)}.")
    settings = DenoiseSettings(cast(DenoiseMethod, method), device)
    args = ["denoise", "{in:volume}", "{out:volume}", *settings.to_cli_args()]
    return SceneJob(
        scene,
        args,
        {"volume": input_node},
        [JobOutput("volume", "preprocessed.nrrd", f"{input_node.GetName()} {method}", "volume", node=output_node)],
    )
