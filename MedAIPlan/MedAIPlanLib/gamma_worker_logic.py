"""The MedAIPlan panel's gamma comparison as a worker job: a fine interpolated search over a clinical dose grid
takes minutes on the CPU, so ``medai gamma`` runs in a separate process (:mod:`MedAICommonLib.jobs.scene_job`).

The gamma volume comes back marked as the in-process Logic marks it (SlicerRT's
``DoseComparison.GammaVolume``, MedAI's pass rate and interpolation), read from the worker's JSON report.
"""

from __future__ import annotations

import json

from MedAICommonLib.jobs.scene_job import JobOutput, SceneJob

REPORT_FILE = "gamma-report.json"


def gamma_job(scene, reference_node, evaluated_node, dose_percent: float = 3.0, dta_mm: float = 3.0,
              threshold_percent: float = 10.0, local: bool = False, device: str = "auto",
              output_node=None) -> SceneJob:
    """``medai gamma REFERENCE EVALUATED --output-gamma G``: the gamma volume (on the reference grid) as a node.

    Criteria as in :meth:`MedAIPlanLib.evaluation_logic.PlanEvaluationLogic.gamma` (dose %, DTA mm, low-dose
    threshold % of the reference maximum, global or local). The node's ``MedAI.GammaPassRate`` attribute
    holds the pass rate (%).
    """
    if reference_node is None or evaluated_node is None:
        raise ValueError("Select the reference dose and the evaluated dose to compare.")
    args = ["gamma", "{in:reference}", "{in:evaluated}", "--dose-percent", f"{dose_percent:g}", "--dta-mm",
            f"{dta_mm:g}", "--threshold-percent", f"{threshold_percent:g}", "--device", device,
            "--output-gamma", "{out:gamma}", "--report", "{dir}/" + REPORT_FILE]
    if local:
        args.append("--local")
    output = JobOutput("gamma", "gamma.nrrd", f"{evaluated_node.GetName()} gamma", "volume", node=output_node)
    job = SceneJob(scene, args, {"reference": reference_node, "evaluated": evaluated_node}, [output])

    def mark(node):
        report = json.loads((job.folder / REPORT_FILE).read_text())
        node.SetAttribute("DoseComparison.GammaVolume", "1")
        node.SetAttribute("MedAI.GammaPassRate", repr(float(report["metrics"]["pass_rate"])))
        node.SetAttribute("MedAI.GammaInterpolation", str(report["parameters"].get("interpolation", "")))

    output.after_load = mark
    return job
