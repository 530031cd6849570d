"""The cohort report (PNG and PDF): metric distributions, DVH bands across the cohort, failed cases.

Metric panels show the key metrics of the cohort table (Dice, HD95, target D95, Dmean, gamma pass rate,
TRE, ... whichever the steps reported), one dot per case over a box plot. DVH bands come from the
cumulative DVH tables that ``dvh`` steps wrote (``--dvh-table``): per structure the median curve and the
10-90 % band over cases. With a ``contour-qa`` step, its case summary leads the metric panels and a row
per such step shows, per structure, the cases flagged dose-relevant and each case's |delta Dmean|,
|delta D95| and Dice (see :mod:`.contour_qa_summary`). The failed cases are listed with their errors.
Matplotlib (Agg) only.
"""

from __future__ import annotations

import csv
import json
import re
import textwrap
from pathlib import Path

import numpy as np

from .contour_qa_summary import contour_qa_steps, structure_values, summary_rows

# key metrics, most telling first: overlap and distance, target coverage and plan indices, gamma, TRE, then doses
_KEY_METRICS = (
    re.compile(r"(dice|hd95|target_|pass_rate|tre|_ICRU|_Paddick)", re.IGNORECASE),
    re.compile(r"(d95|dmean|d98|mean_)", re.IGNORECASE),
)
MAX_PANELS = 8
# a contour-qa step's case summary, in this order, before any other panel (its per-structure columns get a row
# of their own in the report)
CONTOUR_QA_PANELS = (
    "summary.dose_relevant",
    "summary.max_abs_delta_Dmean_Gy",
    "summary.max_abs_delta_D95_Gy",
    "summary.min_dice",
    "mean_dice_matched",
    "summary.max_abs_delta_D0.03cc_Gy",
)
MAX_STRUCTURES = 20


def key_metric_columns(rows: list[dict]) -> list[str]:
    """The metric columns to plot, at most 8: a contour-qa step's case summary first (structures flagged
    dose-relevant, largest |delta Dmean| and |delta D95|, lowest Dice), then key metrics (Dice, HD95, D95,
    Dmean, pass rate, TRE)."""
    from .table import FIXED

    values: dict[str, set] = {}
    for row in rows:
        for key, value in row.items():
            if key not in FIXED and isinstance(value, (int, float)):
                values.setdefault(key, set()).add(value)
    steps = [
        c.removesuffix(".summary.dose_relevant_fraction")
        for c in values
        if c.endswith(".summary.dose_relevant_fraction")
    ]
    preferred = [f"{s}.{c}" for s in steps for c in CONTOUR_QA_PANELS if f"{s}.{c}" in values]
    per_structure = tuple(f"{s}.structures." for s in steps)
    varying = [
        c
        for c, seen in values.items()  # a parameter echoed by every case says nothing
        if len(seen) > 1 and c not in preferred and not c.startswith(per_structure)
    ]

    def rank(column: str) -> tuple[int, int]:
        name = column.rsplit(".", 1)[-1]
        tier = next((i for i, pattern in enumerate(_KEY_METRICS) if pattern.search(name)), len(_KEY_METRICS))
        return tier, column.count(".")

    return (preferred + sorted(varying, key=rank))[:MAX_PANELS]


def _dvh_tables(results: list[dict], output: Path) -> list[Path]:
    tables = []
    for result in results:
        for name in result.get("steps", {}):
            try:
                report = json.loads((output / result["id"] / name / "report.json").read_text())
            except (OSError, ValueError):
                continue
            path = (report.get("outputs") or {}).get("dvh_table")
            if report.get("command") == "dvh" and path and Path(path).is_file():
                tables.append(Path(path))
    return tables


def dvh_bands(
    tables: list[Path], points: int = 200
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per structure: (dose Gy, 10th percentile, median, 90th percentile of volume %) over the cases' DVHs."""
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in tables:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "Dose (Gy)" not in rows[0]:
            continue
        dose = np.array([float(r["Dose (Gy)"]) for r in rows])
        for column in rows[0]:
            if column.endswith(" (%)"):
                curves.setdefault(column[:-4], []).append((dose, np.array([float(r[column]) for r in rows])))
    bands = {}
    for name, pairs in curves.items():
        grid = np.linspace(0.0, max(float(d.max()) for d, _ in pairs), points)
        stack = np.array([np.interp(grid, d, v, right=0.0) for d, v in pairs])
        low, mid, high = np.percentile(stack, [10, 50, 90], axis=0)
        bands[name] = (grid, low, mid, high)
    return bands


def _wrapped(column: str, width: int = 34) -> str:
    """A long column name over lines broken after its dots, so neighbouring panel titles do not overlap."""
    parts = column.split(".")
    lines = [""]
    for piece in [f"{part}." for part in parts[:-1]] + parts[-1:]:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _metric_panel(ax, rows: list[dict], column: str) -> None:
    values = np.array([row[column] for row in rows if isinstance(row.get(column), (int, float))], float)
    ax.boxplot(values, widths=0.5, showfliers=False)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(values))
    ax.scatter(1 + jitter, values, s=10, alpha=0.7, color="#1f77b4")
    ax.set_xticks([])
    ax.set_title(f"{_wrapped(column)}\n(n={len(values)}, median {np.median(values):.3g})", fontsize=8)
    ax.tick_params(labelsize=7)


def _failures_panel(ax, results: list[dict]) -> None:
    ax.axis("off")
    failed = [r for r in results if r["status"] != "done"]
    lines = [f"Failed cases: {len(failed)} of {len(results)}"]
    for result in failed[:12]:
        lines += textwrap.wrap(f"{result['id']}: {result.get('error')}", 90, subsequent_indent="    ")
    if len(failed) > 12:
        lines.append(f"... and {len(failed) - 12} more (see cohort.csv)")
    ax.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        family="monospace",
        fontsize=7,
        color="#b00020" if failed else "#206020",
        transform=ax.transAxes,
    )


def _bands_panel(ax, bands: dict) -> None:
    for index, (name, (dose, low, mid, high)) in enumerate(sorted(bands.items())):
        color = f"C{index % 10}"
        ax.fill_between(dose, low, high, color=color, alpha=0.25, linewidth=0)
        ax.plot(dose, mid, color=color, label=name)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_ylim(0, 102)
    ax.set_title("DVH across the cohort: median and 10-90 % band", fontsize=9)
    ax.legend(fontsize=7, ncols=4)


def _contour_qa_sections(results: list[dict]) -> list[tuple[str, int, list[dict], dict]]:
    """Per contour-qa step with compared structures: (step, cases done, its summary rows (at most
    MAX_STRUCTURES, most often flagged first), per-structure values of each case)."""
    rows = summary_rows(results)
    sections = []
    for step in contour_qa_steps(results):
        cases, values = structure_values(results, step)
        mine = [r for r in rows if r["step"] == step]
        if mine:
            sections.append((step, cases, mine[:MAX_STRUCTURES], values))
    return sections


def _contour_qa_row(fig, grid_row, section) -> None:
    """One row of four panels sharing the structures' axis: cases flagged, |dDmean|, |dD95| and Dice per case."""
    step, cases, rows, values = section
    names = [r["structure"] for r in rows]
    y = np.arange(len(names))[::-1]
    axes = [fig.add_subplot(grid_row[i]) for i in range(4)]
    flagged = np.array([r["flagged_fraction"] or 0.0 for r in rows]) * 100.0
    axes[0].barh(y, flagged, color=np.where(flagged > 0, "#c0392b", "#95a5a6"), height=0.6)
    for yi, r in zip(y, rows):
        axes[0].text(2, yi, f"{r['flagged']}/{r['cases']}", va="center", fontsize=7)
    axes[0].set_xlim(0, 100)
    axes[0].set_xlabel("cases flagged dose-relevant (%)", fontsize=7)
    axes[0].set_title(f"{step}: {cases} cases, {len(values)} structures", fontsize=9, loc="left")
    rng = np.random.default_rng(0)
    for ax, key, label in (
        (axes[1], "abs_delta_Dmean_Gy", "|ΔDmean| (Gy)"),
        (axes[2], "abs_delta_D95_Gy", "|ΔD95| (Gy)"),
        (axes[3], "dice", "Dice"),
    ):
        for yi, name in zip(y, names):
            known = [(v, f) for v, f in zip(values[name][key], values[name]["flagged"]) if v is not None]
            data = np.array([v for v, _ in known], float)
            colours = ["#c0392b" if f else "#1f77b4" for _, f in known]
            ax.scatter(data, yi + rng.uniform(-0.18, 0.18, len(data)), s=10, alpha=0.75, c=colours)
            if len(data):
                ax.plot([np.median(data)] * 2, [yi - 0.35, yi + 0.35], color="k", linewidth=1.2)
        ax.set_xlabel(label, fontsize=7)
        ax.set_yticks(y, [])
    axes[1].set_title("per case (red: flagged), black line: median", fontsize=8, loc="left")
    axes[3].set_xlim(min(0.0, axes[3].get_xlim()[0]), 1.02)
    axes[0].set_yticks(y, names, fontsize=7)
    for ax in axes:
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    if len(values) > len(rows):
        axes[3].annotate(
            f"{len(values) - len(rows)} more structures in contour_qa_summary.csv",
            (1.0, 0.0),
            xycoords="axes fraction",
            xytext=(0, -26),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=7,
        )


def write_cohort_report(results: list[dict], rows: list[dict], output, title: str) -> dict[str, str]:
    """Write ``cohort_report.png`` and ``.pdf`` into ``output``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = Path(output)
    columns = key_metric_columns(rows)
    bands = dvh_bands(_dvh_tables(results, output))
    qa = _contour_qa_sections(results)
    ncols = 4
    metric_rows = max(1, -(-len(columns) // ncols))
    failed = sum(r["status"] != "done" for r in results)
    heights = [3.0] * metric_rows + ([3.6] if bands else []) + [1.3 + 0.28 * len(s[2]) for s in qa]
    heights.append(0.6 + 0.16 * min(failed, 12) * 2)
    fig = plt.figure(figsize=(11.7, sum(heights) + 0.8))
    grid = fig.add_gridspec(len(heights), ncols, height_ratios=heights, hspace=0.6, wspace=0.35)
    for index, column in enumerate(columns):
        _metric_panel(fig.add_subplot(grid[index // ncols, index % ncols]), rows, column)
    if not columns:
        ax = fig.add_subplot(grid[0, :])
        ax.axis("off")
        ax.text(0.5, 0.5, "No numeric metrics in the step reports", ha="center", va="center")
    if bands:
        _bands_panel(fig.add_subplot(grid[metric_rows, :]), bands)
    for index, section in enumerate(qa):
        _contour_qa_row(fig, grid[metric_rows + bool(bands) + index, :].subgridspec(1, 4, wspace=0.08), section)
    _failures_panel(fig.add_subplot(grid[-1, :]), results)
    fig.suptitle(f"{title}: {len(results) - failed} of {len(results)} cases done", fontsize=11)
    paths = {}
    for suffix in ("png", "pdf"):
        path = output / f"cohort_report.{suffix}"
        fig.savefig(path, dpi=110)
        paths[f"report_{suffix}"] = str(path)
    plt.close(fig)
    return paths
