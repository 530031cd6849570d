"""Cohorts of ``contour-qa`` steps: how often, and by how much, contour differences change the dose.

A ``contour-qa`` step's report holds ``metrics.summary`` (the case's line) and ``metrics.structures.<name>``
(``dice``, ``hd95_mm``, ``surface_dice``, ``delta_Dmean_Gy``, ``delta_D95_Gy``, ``delta_D2_Gy``,
``delta_D0.03cc_Gy``, ``relevance``, ``dose_relevant`` and more; deltas are candidate minus reference, Gy).

- :func:`table_metrics`: what the cohort table keeps of such a report (the summary, the mean Dice and the key
  columns of each structure, not every dose statistic of both sets).
- :func:`summary_rows`: per step and structure, over the cases where the step is done: the cases in which the
  structure was compared, those in which it was flagged dose-relevant, median and max |delta Dmean| and
  |delta D95| (Gy), median and min Dice, median HD95 (mm). Written as ``contour_qa_summary.csv``.
- :func:`batch_metrics`: the same in the ``medai batch`` report's ``metrics.contour_qa``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

COMMAND = "contour-qa"
#: Per-structure keys of a contour-qa report that the cohort table keeps (``<step>.structures.<name>.<key>``).
STRUCTURE_KEYS = (
    "dice",
    "hd95_mm",
    "surface_dice",
    "delta_Dmean_Gy",
    "delta_D95_Gy",
    "delta_D2_Gy",
    "delta_D0.03cc_Gy",
    "relevance",
    "dose_relevant",
)
#: Columns of ``contour_qa_summary.csv``.
SUMMARY_COLUMNS = (
    "step",
    "structure",
    "cases",
    "flagged",
    "flagged_fraction",
    "median_abs_delta_Dmean_Gy",
    "max_abs_delta_Dmean_Gy",
    "median_abs_delta_D95_Gy",
    "max_abs_delta_D95_Gy",
    "median_dice",
    "min_dice",
    "median_hd95_mm",
)
SUMMARY_FILE = "contour_qa_summary.csv"
_VALUES = {
    "abs_delta_Dmean_Gy": "delta_Dmean_Gy",
    "abs_delta_D95_Gy": "delta_D95_Gy",
    "dice": "dice",
    "hd95_mm": "hd95_mm",
}


def is_contour_qa(step: dict) -> bool:
    """True for a case-step result (see :func:`.steps.run_case`) of a ``contour-qa`` command."""
    return step.get("command") == COMMAND


def contour_qa_steps(results: list[dict]) -> list[str]:
    """The names of the ``contour-qa`` steps in ``results``, in pipeline order."""
    names: dict[str, None] = {}
    for result in results:
        names.update((name, None) for name, step in result.get("steps", {}).items() if is_contour_qa(step))
    return list(names)


def table_metrics(metrics: dict) -> dict:
    """The part of a contour-qa report's ``metrics`` the cohort table flattens: ``summary``, ``mean_dice_*``
    and, per structure, :data:`STRUCTURE_KEYS` (its other statistics stay in the step's report and table)."""
    kept = {key: metrics[key] for key in ("summary", "mean_dice_matched", "mean_dice_reference") if key in metrics}
    structures = metrics.get("structures")
    if isinstance(structures, dict):
        kept["structures"] = {
            name: {key: row[key] for key in STRUCTURE_KEYS if key in row}
            for name, row in structures.items()
            if isinstance(row, dict)
        }
    return kept


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def structure_values(results: list[dict], step: str) -> tuple[int, dict[str, dict[str, list]]]:
    """(cases where ``step`` is done, ``{structure: {"flagged": [bool], "abs_delta_Dmean_Gy": [...], ...}}``),
    one entry per case that compared the structure, in case order (None where a value is not finite)."""
    cases = 0
    values: dict[str, dict[str, list]] = {}
    for result in results:
        record = result.get("steps", {}).get(step)
        if not record or record.get("status") not in ("run", "skipped"):
            continue
        cases += 1
        for name, row in (record.get("metrics", {}).get("structures") or {}).items():
            if not isinstance(row, dict) or "dice" not in row:  # a band-only row compares nothing
                continue
            entry = values.setdefault(name, {"flagged": [], **{key: [] for key in _VALUES}})
            entry["flagged"].append(bool(row.get("dose_relevant")))
            for key, source in _VALUES.items():
                number = _finite(row.get(source))
                entry[key].append(abs(number) if number is not None and key.startswith("abs_") else number)
    return cases, values


def _stat(values: list, how) -> float | None:
    values = [v for v in values if v is not None]
    return float(how(values)) if values else None


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per contour-qa step and structure (:data:`SUMMARY_COLUMNS`), most often flagged first, then the
    largest median |delta Dmean|."""
    rows = []
    for step in contour_qa_steps(results):
        _, values = structure_values(results, step)
        for name, entry in values.items():
            cases, flagged = len(entry["flagged"]), sum(entry["flagged"])
            rows.append(
                {
                    "step": step,
                    "structure": name,
                    "cases": cases,
                    "flagged": flagged,
                    "flagged_fraction": flagged / cases if cases else None,
                    "median_abs_delta_Dmean_Gy": _stat(entry["abs_delta_Dmean_Gy"], np.median),
                    "max_abs_delta_Dmean_Gy": _stat(entry["abs_delta_Dmean_Gy"], np.max),
                    "median_abs_delta_D95_Gy": _stat(entry["abs_delta_D95_Gy"], np.median),
                    "max_abs_delta_D95_Gy": _stat(entry["abs_delta_D95_Gy"], np.max),
                    "median_dice": _stat(entry["dice"], np.median),
                    "min_dice": _stat(entry["dice"], np.min),
                    "median_hd95_mm": _stat(entry["hd95_mm"], np.median),
                }
            )
    steps = contour_qa_steps(results)
    rows.sort(
        key=lambda r: (
            steps.index(r["step"]),
            -(r["flagged_fraction"] or 0.0),
            -(r["median_abs_delta_Dmean_Gy"] or 0.0),
            r["structure"],
        )
    )
    return rows


def write_summary(results: list[dict], folder) -> dict[str, str]:
    """Write ``contour_qa_summary.csv`` into ``folder`` when the pipeline has a contour-qa step that ran on
    a case; returns ``{"contour_qa_summary": path}`` (empty otherwise)."""
    rows = summary_rows(results)
    if not rows:
        return {}
    path = Path(folder) / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    tmp.replace(path)
    return {"contour_qa_summary": str(path)}


def _step_metrics(results: list[dict], step: str, rows: list[dict]) -> dict:
    cases, _ = structure_values(results, step)
    flagged_cases = 0
    for result in results:
        record = result.get("steps", {}).get(step) or {}
        if record.get("status") in ("run", "skipped"):
            flagged_cases += bool((record.get("metrics", {}).get("summary") or {}).get("dose_relevant"))
    mine = [r for r in rows if r["step"] == step]
    return {
        "step": step,
        "cases": cases,
        "cases_flagged": flagged_cases,
        "structures_flagged": {r["structure"]: r["flagged"] for r in mine},
        "structures": {r["structure"]: {k: v for k, v in r.items() if k not in ("step", "structure")} for r in mine},
    }


def batch_metrics(results: list[dict]) -> dict:
    """``{"contour_qa": {...}}`` for the batch report, or ``{}`` without a contour-qa step.

    With one contour-qa step: ``step``, ``cases`` (where it is done), ``cases_flagged`` (with at least one
    dose-relevant structure), ``structures_flagged`` (``{structure: cases flagged}``) and ``structures`` (each
    structure's summary row). With several: that mapping per step name.
    """
    steps = contour_qa_steps(results)
    if not steps:
        return {}
    rows = summary_rows(results)
    per_step = {step: _step_metrics(results, step, rows) for step in steps}
    return {"contour_qa": per_step[steps[0]] if len(steps) == 1 else per_step}
