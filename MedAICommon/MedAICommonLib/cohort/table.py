"""The cohort table: one row per case with its status, error and every step's scalar metrics.

Columns: ``id``, ``status`` (done | failed), ``error``, ``steps_run``, ``steps_skipped``, then
``<step>.<metric>`` for each number in a step's report ``metrics``, nested keys joined with ``.``
(``segment.voxels.label 1``, ``evaluate.mean_dice``, ``dvh.structures.PTV.D95``). Of a ``contour-qa`` step
it keeps the case summary and each structure's key columns (``contour-qa.summary.dose_relevant``,
``contour-qa.structures.liver.delta_Dmean_Gy``; see :mod:`.contour_qa_summary`). Written as CSV, and as Parquet
too when pyarrow is installed; with a contour-qa step, ``contour_qa_summary.csv`` beside it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..optional import missing_packages, require_packages
from .contour_qa_summary import is_contour_qa, table_metrics, write_summary

FIXED = ("id", "status", "error", "steps_run", "steps_skipped")


def flatten(metrics, prefix: str) -> dict[str, float]:
    """The numbers in ``metrics`` (nested dicts) as ``{"prefix.key.sub": value}``; lists and text are left out."""
    flat: dict[str, float] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            flat.update(flatten(value, f"{prefix}.{key}"))
    elif isinstance(metrics, bool):
        flat[prefix] = int(metrics)
    elif isinstance(metrics, (int, float)) and math.isfinite(metrics):
        flat[prefix] = metrics
    return flat


def cohort_rows(results: list[dict]) -> list[dict]:
    """One row per case result (see :func:`.steps.run_case`)."""
    rows = []
    for result in results:
        steps = result.get("steps", {})
        row = {
            "id": result["id"],
            "status": result["status"],
            "error": result.get("error") or "",
            "steps_run": sum(s["status"] == "run" for s in steps.values()),
            "steps_skipped": sum(s["status"] == "skipped" for s in steps.values()),
        }
        for name, step in steps.items():
            metrics = step.get("metrics", {})
            row.update(flatten(table_metrics(metrics) if is_contour_qa(step) else metrics, name))
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    extra = dict.fromkeys(key for row in rows for key in row if key not in FIXED)
    return [*FIXED, *extra]


def write_cohort_table(results: list[dict], folder) -> dict[str, str]:
    """Write ``cohort.csv`` (and ``cohort.parquet`` when pyarrow imports, ``contour_qa_summary.csv`` with a
    contour-qa step) into ``folder``; returns the paths."""
    folder = Path(folder)
    rows = cohort_rows(results)
    columns = _columns(rows)
    tmp = folder / ".cohort.csv.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(folder / "cohort.csv")
    written = {"table": str(folder / "cohort.csv")}
    if not missing_packages(["pyarrow"]):
        written["parquet"] = str(_write_parquet(rows, columns, folder / "cohort.parquet"))
    written.update(write_summary(results, folder))
    return written


def _write_parquet(rows: list[dict], columns: list[str], path: Path) -> Path:
    require_packages(["pyarrow"], "The Parquet cohort table", "pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        numeric = column not in FIXED[:3]
        data[column] = [None if v is None or v == "" else (float(v) if numeric else str(v)) for v in values]
    pq.write_table(pa.table(data), path)
    return path
