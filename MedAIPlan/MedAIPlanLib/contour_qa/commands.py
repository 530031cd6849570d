"""``medai contour-qa DOSE REFERENCE [CANDIDATE]``: what a contour difference, or a model's uncertainty, does to
the dose.

REFERENCE and CANDIDATE are segmentations (.seg.nrrd), RTSTRUCT (.dcm, rasterised on the dose grid) or label
maps (NIfTI/NRRD; ``--label-names`` names their values, ``totalsegmentator`` for TotalSegmentator's classes).
``--probabilities DIR`` reads ``prob_{name}.nrrd`` files (``medai segment --probabilities DIR/prob_{label}.nrrd``)
and gives each structure its DVH band. The JSON report's ``metrics.structures`` maps each matched structure to
its row (see :mod:`.metrics` and :mod:`.bands`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from MedAICommonLib.cli.inputs import require_inputs

from .labels import label_names, name_key, read_mapping

if TYPE_CHECKING:
    from .logic import ContourQALogic

# The bridge, the Logic and the metrics (VTK, SimpleITK, scipy, matplotlib) are imported by the command once its
# input files are checked: ``medai contour-qa --help`` and a missing file never pay for them.

_VOLUME_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".nhdr", ".mha", ".mhd")


def _floats(text: str | None, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError as error:
        raise ValueError(f"{option} needs comma-separated numbers, got {text!r}.") from error
    if not all(np.isfinite(values)):
        raise ValueError(f"{option} needs finite numbers, got {text!r}.")
    return values


def register(subparsers, add_common_options) -> None:
    """Add ``contour-qa``."""
    p = subparsers.add_parser("contour-qa", help="dose-aware comparison of two structure sets (and model "
                              "uncertainty bands)")
    p.add_argument("dose", help="dose volume file or RTDOSE (.dcm), Gy")
    p.add_argument("reference", help="reference structures: .seg.nrrd, RTSTRUCT (.dcm) or label map")
    p.add_argument("candidate", nargs="?", help="candidate structures (same forms); optional with --probabilities")
    p.add_argument("--plan-target", metavar="NAME", help="the plan's target (reference name): its D95 is checked")
    p.add_argument("--mapping", metavar="FILE", help="JSON {reference: candidate} or CSV 'reference,candidate' "
                   "pairing names that differ")
    p.add_argument("--label-names", metavar="MAP", help="names of label-map values: 'totalsegmentator', "
                   "'1=spleen,5=liver' or a file of 'value name' lines")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="surface-Dice tolerance (mm, default 2)")
    p.add_argument("--vx", default="20,30", help="doses x (Gy) of the Vx differences, comma-separated (default 20,30)")
    p.add_argument("--prescription", type=float, help="prescription (Gy): relative limits are %% of it")
    g = p.add_argument_group("dose-relevance limits (a structure is flagged when a |delta| exceeds one)")
    g.add_argument("--dmean-gy", type=float, default=1.0, help="|delta Dmean| in Gy (default 1)")
    g.add_argument("--dmean-percent", type=float, default=3.0, help="|delta Dmean| in %% of the prescription (3)")
    g.add_argument("--dmax-gy", type=float, default=2.0, help="|delta D0.03cc| in Gy (default 2)")
    g.add_argument("--dmax-percent", type=float, default=5.0, help="|delta D0.03cc| in %% of the prescription (5)")
    g.add_argument("--target-d95-percent", type=float, default=2.0,
                   help="|delta D95| of the plan target in %% of the prescription (or of its D95) (default 2)")
    p.add_argument("--constraint", action="append", default=[], metavar="S:STAT<GY",
                   help="clinical constraint, e.g. 'liver:Dmean<30' (repeatable): a pass/fail change between the "
                   "sets, or a band crossing it, is flagged")
    p.add_argument("--probabilities", metavar="PROB_DIR", help="folder of probability maps prob_{name}.nrrd "
                   "(medai segment --probabilities): DVH bands per structure")
    p.add_argument("--levels", default="0.25,0.5,0.75", help="probability levels of the bands (default 0.25,0.5,0.75)")
    p.add_argument("--ct", help="CT shown under the dose in the report's axial view")
    p.add_argument("--table", metavar="T.csv", help="write the ranked table (.csv)")
    p.add_argument("--report-pdf", metavar="QA.pdf", help="write the PDF report (table, axial view, paired DVHs)")
    p.add_argument("--report-png", metavar="QA.png", help="write the one-page PNG overview")
    add_common_options(p)
    p.set_defaults(func=cmd_contour_qa)


def _load_structures(scene, path, names, dose_node):
    from MedAICommonLib import bridge
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    if str(path).lower().endswith(".dcm"):
        return PlanEvaluationLogic(scene).import_rtstruct(path)  # its own 1 mm in-plane grid, finer than most doses
    return bridge.load_segmentation(scene, path, segment_names=names)


def _load_dose(scene, path):
    from MedAICommonLib import bridge
    from MedAIPlanLib.evaluation.dose_volume import mark_as_dose_volume
    from MedAIPlanLib.evaluation_logic import PlanEvaluationLogic

    if str(path).lower().endswith(".dcm"):
        return PlanEvaluationLogic(scene).import_rtdose(path)
    return mark_as_dose_volume(bridge.load_volume(scene, path))


def probability_files(folder, structures) -> dict[str, Path]:
    """``{structure: file}`` for the probability maps in ``folder`` named ``prob_<name>`` (or ``<name>``) with a
    volume suffix, names compared as in :func:`labels.name_key`; ``ValueError`` if the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--probabilities needs a folder of prob_<structure>.nrrd files; {folder} is not a folder.")
    found = {}
    for path in sorted(folder.iterdir()):
        suffix = next((s for s in _VOLUME_SUFFIXES if path.name.lower().endswith(s)), None)
        if suffix:
            found[name_key(re.sub(r"^prob(ability)?_", "", path.name[: -len(suffix)], flags=re.I))] = path
    out = {s: found[name_key(s)] for s in structures if name_key(s) in found}
    if not out:
        raise ValueError(f"No probability map in {folder} is named after a structure (prob_<name>.nrrd); it has "
                         f"{', '.join(p.name for p in sorted(folder.iterdir())[:10]) or 'no files'}; the "
                         f"structures are {', '.join(list(structures)[:10])}.")
    return out


def _parameters(args) -> dict:
    from .bands import check_levels

    return {"plan_target": args.plan_target, "tolerance_mm": args.tolerance_mm, "v_doses_gy": _floats(args.vx, "--vx"),
            "prescription_gy": args.prescription, "levels": list(check_levels(_floats(args.levels, "--levels"))),
            "constraints": list(args.constraint),
            "thresholds": {"dmean_gy": args.dmean_gy, "dmean_percent": args.dmean_percent, "dmax_gy": args.dmax_gy,
                           "dmax_percent": args.dmax_percent, "target_d95_percent": args.target_d95_percent}}


def cmd_contour_qa(args, report) -> int:
    """Compare the two sets (and/or the bands) and fill the report, the table and the PDF/PNG."""
    if args.candidate is None and not args.probabilities:
        raise ValueError("Give a CANDIDATE structure set to compare with the reference, or --probabilities PROB_DIR "
                         "for DVH bands (or both).")
    require_inputs(args.dose, args.reference, args.candidate, args.mapping, args.ct)
    from MedAICommonLib.runtime import get_scene

    from .bands import parse_constraint
    from .logic import ContourQALogic
    from .metrics import Thresholds

    scene = get_scene()
    logic = ContourQALogic(scene, args.progress)
    report.parameters.update(_parameters(args))
    thresholds = Thresholds(**report.parameters["thresholds"])
    constraints = [parse_constraint(c) for c in args.constraint]
    report.inputs.update({k: str(v) for k, v in (("dose", args.dose), ("reference", args.reference),
                                                 ("candidate", args.candidate), ("probabilities", args.probabilities))
                          if v})
    names = label_names(args.label_names)
    with report.timed("load"):
        dose = _load_dose(scene, args.dose)
        reference = _load_structures(scene, args.reference, names, dose)
        candidate = _load_structures(scene, args.candidate, names, dose) if args.candidate else None
    with report.timed("compare"):
        if candidate is not None:
            result = logic.compare(dose, reference, candidate, read_mapping(args.mapping) if args.mapping else None,
                                   args.plan_target, report.parameters["v_doses_gy"], args.tolerance_mm,
                                   args.prescription, thresholds, constraints)
        else:
            result = logic.reference_only(dose, reference, report.parameters["v_doses_gy"])
    probability_nodes = {}
    if args.probabilities:
        with report.timed("bands"):
            probability_nodes = _add_bands(args, report, scene, logic, dose, result, constraints, candidate is None)
    _fill_metrics(report, result)
    _write_outputs(args, report, scene, logic, result, (dose, reference, candidate, probability_nodes))
    report.timings_s.update({f"logic {k}": round(v, 4) for k, v in result.timings_s.items()})
    _print_rows(result.structures)
    return 0


def _add_bands(args, report, scene, logic: ContourQALogic, dose, result, constraints, bands_only: bool) -> dict:
    """Load the probability maps of ``--probabilities``, attach each structure's DVH band to ``result`` (with
    ``bands_only``, rank those crossing a constraint first, then the widest Dmean band) and return the nodes."""
    from MedAICommonLib import bridge

    from .bands import DEFAULT_LEVELS

    files = probability_files(args.probabilities, list(result.structures))
    probability_nodes = {name: bridge.load_volume(scene, path) for name, path in files.items()}
    bands = logic.bands(dose, probability_nodes, report.parameters["levels"] or DEFAULT_LEVELS, constraints)
    logic.attach_bands(result, bands)
    if bands_only:
        result.structures = dict(sorted(result.structures.items(), key=_band_rank))
    return probability_nodes


def _fill_metrics(report, result) -> None:
    """The report's metrics: summary, rows, ranking, dose-relevant and unmatched structures, mean Dice."""
    rows = result.structures
    report.metrics["summary"] = summary(rows)  # first: cohort tables list its columns before the rows'
    report.metrics["structures"] = rows
    report.metrics["ranking"] = list(rows)
    report.metrics["dose_relevant"] = [n for n, r in rows.items() if r.get("dose_relevant")]
    report.metrics["unmatched"] = {"reference": result.unmatched_reference, "candidate": result.unmatched_candidate}
    dice = [r["dice"] for r in rows.values() if "dice" in r]
    if dice:
        report.metrics["mean_dice_matched"] = float(np.mean(dice))
        report.metrics["mean_dice_reference"] = float(np.sum(dice) / (len(dice) + len(result.unmatched_reference)))


def _write_outputs(args, report, scene, logic: ContourQALogic, result, nodes: tuple) -> None:
    """Write the ranked table and the PDF/PNG report that were asked for; ``nodes`` = (dose, reference,
    candidate or None, {structure: probability node})."""
    from MedAICommonLib import bridge

    dose, reference, candidate, probability_nodes = nodes
    rows = result.structures
    if args.table:
        report.outputs["table"] = str(bridge.save_node(logic.table(result, result.table), args.table))
    info = {"Dose": Path(args.dose).name, "Reference": Path(args.reference).name,
            "Candidate": Path(args.candidate).name if args.candidate else "-", "Plan target": args.plan_target or "-",
            "Prescription (Gy)": args.prescription or "-", "Limits (Gy)": _limits_text(rows)}
    with report.timed("report"):
        ct = bridge.load_volume(scene, args.ct) if args.ct else None
        for key, out in (("report_pdf", args.report_pdf), ("report_png", args.report_png)):
            if out:
                report.outputs[key] = str(logic.write_report(out, result, dose, reference, candidate,
                                                             probability_nodes, ct, info))


def _print_rows(rows: dict) -> None:
    """Print the first ten structures: Dice and dose changes, or the Dmean band for bands only."""
    for name in list(rows)[:10]:
        r = rows[name]
        if "dice" not in r:
            low, high = r.get("Dmean_band_Gy", [float("nan")] * 2)
            print(f"{name}: {'BAND CROSSES A CONSTRAINT ' if r.get('band_crosses_constraint') else ''}"
                  f"Dmean band {low:.2f}..{high:.2f} Gy")
            continue
        print(f"{name}: {'DOSE-RELEVANT ' if r.get('dose_relevant') else ''}Dice {r.get('dice', float('nan')):.3f}  "
              f"dDmean {r.get('delta_Dmean_Gy', float('nan')):+.2f} Gy  dD95 {r.get('delta_D95_Gy', float('nan')):+.2f} Gy")


def _band_rank(item) -> tuple:
    row = item[1]
    low, high = row.get("Dmean_band_Gy", [0.0, 0.0])
    width = high - low if np.isfinite(high - low) else -1.0
    return (not row.get("band_crosses_constraint", False), -width)


def summary(rows: dict) -> dict:
    """Case-level figures for cohorts: how many structures changed the dose, and the largest changes (Gy)."""
    out = {"structures": len(rows), "dose_relevant": sum(bool(r.get("dose_relevant")) for r in rows.values())}
    out["dose_relevant_fraction"] = out["dose_relevant"] / len(rows) if rows else 0.0
    for key in ("delta_Dmean_Gy", "delta_D95_Gy", "delta_D2_Gy", "delta_D0.03cc_Gy"):
        values = [abs(r[key]) for r in rows.values() if np.isfinite(r.get(key, np.nan))]
        if values:
            out[f"max_abs_{key}"] = float(max(values))
    dice = [r["dice"] for r in rows.values() if "dice" in r]
    if dice:
        out["min_dice"] = float(min(dice))
    return out


def _limits_text(rows: dict) -> str:
    limits = next((r["limits_gy"] for r in rows.values() if r.get("is_target")), None) or \
        next((r.get("limits_gy") for r in rows.values() if r.get("limits_gy")), {})
    return ", ".join(f"|d{k}| > {v:.2f}" for k, v in limits.items()) or "-"
