"""The contour-QA report: a CSV table (see the Logic's table) and a PDF (or one-page PNG) a physicist reads.

Pages (A4 landscape): (1) the ranked table with the dose-relevant rows in red, the limits used and the
unmatched structures; (2) an axial slice where the contours of the most dose-relevant structures disagree in
a high-dose region, with the dose wash (colour bar in Gy), the reference contours solid and the candidate's
dashed, a legend and orientation letters, beside the paired DVHs of the top structures; (3) paired DVHs of
the next structures. DVH bands from probabilities are drawn shaded. Arrays are KJI on one grid
(:class:`~MedAICommonLib.geometry.Geometry`, RAS or LPS), doses in Gy, volumes in %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedAICommonLib import figures

PAGE_SIZE_IN = (11.69, 8.27)
_COLUMNS = (
    ("dice", "Dice", "{:.3f}"),
    ("hd95_mm", "HD95 mm", "{:.1f}"),
    ("surface_dice", "sDice", "{:.3f}"),
    ("delta_Dmean_Gy", "dDmean Gy", "{:+.2f}"),
    ("delta_D95_Gy", "dD95 Gy", "{:+.2f}"),
    ("delta_D2_Gy", "dD2 Gy", "{:+.2f}"),
    ("delta_D0.03cc_Gy", "dD0.03cc Gy", "{:+.2f}"),
    ("relevance", "relevance", "{:.2f}"),
)

_BAND_COLUMNS = tuple(
    (f"{stat}_band_Gy.{end}", f"{stat} {end} Gy", "{:.2f}")
    for stat in ("Dmean", "D95", "D2")
    for end in ("low", "high")
)


def _value(row: dict, key: str):
    """``row[key]``, or one end of a band for ``"<stat>_band_Gy.low"`` / ``".high"``."""
    if key.endswith((".low", ".high")):
        band, end = key.rsplit(".", 1)
        return row.get(band, [math.nan, math.nan])[0 if end == "low" else 1]
    return row.get(key)


@dataclass
class ReportView:
    """What the axial panel shows: the dose (Gy) and optionally a CT (HU) on the masks' grid, both contour sets."""

    dose_kji: np.ndarray
    geometry: object
    reference: dict
    candidate: dict
    ct_kji: np.ndarray | None = None


@dataclass
class ContourQAReport:
    """Everything the report shows; ``curves``: ``{name: {"reference": (Gy, %), "candidate": (Gy, %)}}``,
    ``bands``: ``{name: [(Gy, %) per probability level]}``."""

    title: str
    rows: dict
    curves: dict
    view: ReportView | None = None
    bands: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    unmatched: dict = field(default_factory=dict)


def _fmt(value, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _table_page(fig, report: ContourQAReport, max_rows: int = 30) -> None:
    fig.suptitle(report.title, fontsize=13, fontweight="bold")
    lines = [f"{k}: {v}" for k, v in report.info.items()]
    if any("dice" in r for r in report.rows.values()):
        flagged = [n for n, r in report.rows.items() if r.get("dose_relevant")]
        lines.append(
            f"{len(report.rows)} structures compared, {len(flagged)} dose-relevant (red; ranked by "
            "relevance = largest |delta| / its limit)"
        )
    else:
        flagged = [n for n, r in report.rows.items() if r.get("band_crosses_constraint")]
        lines.append(
            f"{len(report.rows)} structures with DVH bands, {len(flagged)} crossing a constraint (red, "
            "first; then the widest Dmean band first)"
        )
    for side, names in report.unmatched.items():
        if names:
            lines.append(f"Unmatched in the {side}: {', '.join(names)}")
    fig.text(0.03, 0.93, "\n".join(lines), va="top", fontsize=8, family="monospace", wrap=True)
    names = list(report.rows)[:max_rows]
    compared = any("dice" in r for r in report.rows.values())
    columns, flag = (_COLUMNS, "dose_relevant") if compared else (_BAND_COLUMNS, "band_crosses_constraint")
    cells = [
        [n[:28]]
        + [_fmt(_value(report.rows[n], k), f) for k, _, f in columns]
        + ["yes" if report.rows[n].get(flag) else ""]
        for n in names
    ]
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.93 - 0.025 * (len(lines) + 1)))
    ax.axis("off")
    if not cells:
        return
    table = ax.table(
        cellText=cells,
        colLabels=["Structure"] + [c for _, c, _ in columns] + ["flag"],
        loc="upper center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1.0, 1.1)
    for row, name in enumerate(names, start=1):
        if report.rows[name].get(flag):
            for col in range(len(columns) + 2):
                table[row, col].set_text_props(color="#c00000", fontweight="bold")
    if len(report.rows) > max_rows:
        ax.set_title(f"(first {max_rows} of {len(report.rows)}; all rows in the CSV table)", fontsize=8, loc="left")


def _dvh_panel(ax, name: str, report: ContourQAReport, color: str) -> None:
    pair = report.curves.get(name, {})
    for level in report.bands.get(name, []):
        ax.plot(*level, color=color, lw=0.6, alpha=0.5)
    band = report.bands.get(name)
    if band and len(band) > 1:
        grid = np.linspace(0, max(float(np.max(b[0])) for b in band), 300)
        ys = np.array([np.interp(grid, b[0], b[1], right=0.0) for b in band])
        ax.fill_between(grid, ys.min(0), ys.max(0), color=color, alpha=0.2, label="probability band")
    for side, style in (("reference", "-"), ("candidate", "--")):
        if side in pair:
            ax.plot(*pair[side], color=color if side == "reference" else "k", ls=style, lw=1.3, label=side)
    row = report.rows.get(name, {})
    flag = " - DOSE-RELEVANT" if row.get("dose_relevant") else ""
    if "dice" in row:
        detail = f"Dice {_fmt(row.get('dice'), '{:.3f}')}, dDmean {_fmt(row.get('delta_Dmean_Gy'), '{:+.2f}')} Gy"
    else:
        flag = " - BAND CROSSES A CONSTRAINT" if row.get("band_crosses_constraint") else ""
        low, high = row.get("Dmean_band_Gy", [math.nan, math.nan])
        detail = f"Dmean band {_fmt(low, '{:.1f}')}..{_fmt(high, '{:.1f}')} Gy"
    ax.set_title(f"{name}{flag}\n{detail}", fontsize=8, color="#c00000" if flag else "black")
    ax.set_xlabel("Dose (Gy)", fontsize=7)
    ax.set_ylabel("Volume (%)", fontsize=7)
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def disagreement_slice(view: ReportView, names) -> int:
    """Axial index (along the array axis normal to axial) with the most dose-weighted disagreement of ``names``."""
    weight = np.zeros(view.dose_kji.shape)
    for name in names:
        weight += (view.reference[name] ^ view.candidate[name]) * view.dose_kji
    if not weight.any():
        weight = sum(view.reference[n].astype(float) for n in names) * view.dose_kji
    axis = figures.slice_view(view.dose_kji, view.geometry, "axial").array_axis
    return int(np.argmax(weight.sum(axis=tuple(a for a in range(3) if a != axis))))


def _axial_panel(fig, ax, report: ContourQAReport, names, colors) -> None:
    view = report.view
    index = disagreement_slice(view, names)
    dose_view = figures.slice_view(view.dose_kji, view.geometry, "axial", index)
    top = float(view.dose_kji.max())
    if view.ct_kji is not None:
        figures.show_slice(ax, figures.slice_view(view.ct_kji, view.geometry, "axial", index), vmin=-400, vmax=400)
    else:
        ax.set_facecolor("black")
    wash = figures.show_slice(
        ax,
        dose_view,
        cmap="jet",
        vmin=0,
        vmax=top,
        alpha=0.5 if view.ct_kji is not None else 1.0,
        masked_below=0.1 * top,
    )
    figures.add_colorbar(fig, ax, wash, "Dose (Gy)")
    handles = figures.draw_outlines(
        ax,
        {n: figures.slice_view(view.reference[n], view.geometry, "axial", index) for n in names},
        colors,
        suffix=" (reference)",
    )
    handles += figures.draw_outlines(
        ax,
        {n: figures.slice_view(view.candidate[n], view.geometry, "axial", index) for n in names},
        colors,
        linestyle="--",
        suffix=" (candidate)",
    )
    figures.add_orientation_labels(ax, dose_view)
    ax.set_title(f"Where the contours disagree in dose\n{dose_view.label}", fontsize=9)
    figures.legend_below(ax, handles, columns=2)


def _new_page():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=PAGE_SIZE_IN)


def overview_figure(report: ContourQAReport, top: int = 4):
    """Axial disagreement panel (left) and the paired DVHs of the ``top`` most relevant structures (right)."""
    fig = _new_page()
    with_view = report.view is not None
    names = [n for n in report.rows if n in report.curves][: top if with_view else 2 * top]
    colors = figures.structure_colors(names)
    fig.suptitle(
        f"{report.title}: the {len(names)} "
        + (
            "most dose-relevant structures"
            if with_view
            else "structures first in rank (bands crossing a constraint, then the widest)"
        ),
        fontsize=12,
    )
    grid = fig.add_gridspec(2, 4, left=0.04, right=0.98, top=0.88, bottom=0.1, wspace=0.45, hspace=0.5)
    if with_view and names:
        _axial_panel(fig, fig.add_subplot(grid[:, :2]), report, names[:3], colors)
    for i, name in enumerate(names):
        cell = grid[i // 2, 2 + i % 2] if with_view else grid[i // 4, i % 4]
        _dvh_panel(fig.add_subplot(cell), name, report, colors[name])
    return fig


def _dvh_page(report: ContourQAReport, names):
    fig = _new_page()
    fig.suptitle(f"{report.title}: paired DVHs (reference solid, candidate dashed)", fontsize=12)
    grid = fig.add_gridspec(3, 4, left=0.05, right=0.98, top=0.9, bottom=0.06, wspace=0.4, hspace=0.7)
    colors = figures.structure_colors(names)
    for i, name in enumerate(names[:12]):
        _dvh_panel(fig.add_subplot(grid[i // 4, i % 4]), name, report, colors[name])
    return fig


def write_report(path, report: ContourQAReport, top: int = 16) -> Path:
    """Write the PDF (``.pdf``: table, overview, paired DVHs of the next structures up to ``top``) or the
    one-page PNG overview (any other suffix); returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".pdf":
        fig = overview_figure(report)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        fig = _new_page()
        _table_page(fig, report)
        pdf.savefig(fig)
        plt.close(fig)
        for fig in (overview_figure(report),):
            pdf.savefig(fig)
            plt.close(fig)
        rest = [n for n in report.rows if n in report.curves][4 if report.view is not None else 8 : top]
        if rest:
            fig = _dvh_page(report, rest)
            pdf.savefig(fig)
            plt.close(fig)
    return path
