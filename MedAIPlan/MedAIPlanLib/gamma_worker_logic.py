"""The MedAIPlan panel's gamma comparison as a worker job: a fine interpolated search over a clinical dose grid
takes minutes on the CPU, so ``medai gamma`` runs in a separate process (:mod:`MedAICommonLib.jobs.scene_job`).

The gamma volume comes back marked as the in-process Logic marks it (SlicerRT's
``DoseComparison.GammaVolume``, MedAI's pass rate and interpolation), read from the worker's JSON report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from MedAICommonLib.cli.command_line import from_namespace, option, to_cli_args
from MedAICommonLib.devices import Device
from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

REPORT_FILE = "gamma-report.json"


@dataclass(frozen=True)
class GammaSettings:
    """The ``medai gamma`` criteria the panel runs: dose difference (%), distance to agreement (mm), low-dose
    threshold (% of the reference maximum), local instead of global gamma, and the device; the other options
    keep the command's defaults."""

    dose_percent: float = field(default=3.0, metadata=option("--dose-percent"))
    dta_mm: float = field(default=3.0, metadata=option("--dta-mm"))
    threshold_percent: float = field(default=10.0, metadata=option("--threshold-percent"))
    local: bool = field(default=False, metadata=option("--local", "flag"))
    device: Device = field(default="auto", metadata=option("--device"))

    def to_cli_args(self) -> list[str]:
        """The ``medai gamma`` options that give these settings (no inputs, outputs or report)."""
        return to_cli_args(self)

    @classmethod
    def from_namespace(cls, args) -> GammaSettings:
        """The settings of a parsed ``medai gamma`` command line."""
        return from_namespace(cls, args)


def gamma_job(
    scene,
    reference_node,
    evaluated_node,
    dose_percent: float = 3.0,
    dta_mm: float = 3.0,
    threshold_percent: float = 10.0,
    local: bool = False,
    device: Device = "auto",
    output_node=None,
) -> SceneJob:
    """``medai gamma REFERENCE EVALUATED --output-gamma G``: the gamma volume (on the reference grid) as a node.

    Criteria as in :meth:`MedAIPlanLib.evaluation_logic.PlanEvaluationLogic.gamma` (dose %, DTA mm, low-dose
    threshold % of the reference maximum, global or local). The node's ``MedAI.GammaPassRate`` attribute
    holds the pass rate (%). The options are generated from :class:`GammaSettings`.
    """
    if reference_node is None or evaluated_node is None:
        raise ValueError("Select the reference dose and the evaluated dose to compare.")
    settings = GammaSettings(float(dose_percent), float(dta_mm), float(threshold_percent), bool(local), device)
    args = [
        "gamma",
        "{in:reference}",
        "{in:evaluated}",
        *settings.to_cli_args(),
        "--output-gamma",
        "{out:gamma}",
        "--report",
        "{dir}/" + REPORT_FILE,
    ]
    output = JobOutput("gamma", "gamma.nrrd", f"{evaluated_node.GetName()} gamma", "volume", node=output_node)
    job = SceneJob(scene, args, {"reference": reference_node, "evaluated": evaluated_node}, [output])

    def mark(node):
        report = json.loads((job.folder / REPORT_FILE).read_text())
        node.SetAttribute("DoseComparison.GammaVolume", "1")
        node.SetAttribute("MedAI.GammaPassRate", repr(float(report["metrics"]["pass_rate"])))
        node.SetAttribute("MedAI.GammaInterpolation", str(report["parameters"].get("interpolation", "")))

    output.after_load = mark
    return job
