"""Plan reports: a one-page PNG (axial dose on CT with structure outlines and isodose lines, DVH, metric
table) and a three-page PDF (summary and metric table; axial, coronal and sagittal dose through the target;
DVH). Every page is A4 landscape.

Works on arrays: a :class:`PlanReport` holds the dose (Gy, KJI) with its geometry (RAS or LPS), the CT (HU)
and structure masks on the same grid, the DVH curves ``{structure: (dose_gy, volume_percent)}`` and the
metrics ``{structure: {metric: value}}``. Slices are shown as Slicer shows them (patient right on the
image left in axial and coronal, anterior on the left in sagittal), labelled from the geometry (see
:mod:`MedAICommonLib.figures`); each slice goes through the target's largest cross-section in that plane
(the dose maximum without a target).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedAICommonLib import figures
from MedAICommonLib.geometry import Geometry

REPORT_METRICS = ("volume_cc", "Dmean_Gy", "D98_Gy", "D95_Gy", "D50_Gy", "D2_Gy", "Dmax_Gy")
PAGE_SIZE_IN = (11.69, 8.27)
"""A4 landscape (inches): the size of the PNG report and of every PDF page."""


@dataclass
class PlanReport:
    """What a plan report shows. Arrays are KJI on one grid (``geometry``); dose in Gy, CT in HU.

    ``structures``: ``{name: bool mask}``; ``target``: the structure the slices go through;
    ``isodose_levels_gy`` and ``prescription_gy`` (for the % in the isodose legend); ``centre_kji``
    overrides the slice choice; ``position_known=False`` when ``geometry`` lacks the true origin (slices are then
    titled by index, not mm).
    """

    dose: np.ndarray
    geometry: Geometry
    curves: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    ct: np.ndarray | None = None
    structures: dict = field(default_factory=dict)
    target: str | None = None
    isodose_levels_gy: tuple = ()
    prescription_gy: float | None = None
    plan_indices: dict | None = None
    info: dict | None = None
    title: str = "MedAI plan report"
    centre_kji: tuple | None = None
    position_known: bool = True

    def slice_index(self, plane: str) -> int:
        """Index of the slice shown in ``plane``: the target's largest section, else through the dose maximum."""
        if self.centre_kji is None and self.target in self.structures and np.any(self.structures[self.target]):
            return figures.largest_section(self.structures[self.target], self.geometry, plane)
        centre = self.centre_kji
        if centre is None:
            centre = np.unravel_index(int(np.argmax(self.dose)), self.dose.shape)
        axis = figures.slice_view(self.dose, self.geometry, plane, 0).array_axis
        return int(np.clip(centre[axis], 0, self.dose.shape[axis] - 1))

    def colors(self) -> dict:
        """One outline/DVH colour per structure (the same on every page)."""
        return figures.structure_colors(list(dict.fromkeys([*self.structures, *self.curves])))


def _dose_panel(fig, ax, report: PlanReport, plane: str, legend: bool = True):
    """One dose-on-CT slice with outlines, isodose lines and (``legend``) their legend; returns the handles."""
    background = report.ct if report.ct is not None else np.full(report.dose.shape, -1000.0)
    return figures.draw_anatomy_panel(
        fig,
        ax,
        background,
        report.geometry,
        plane,
        report.slice_index(plane),
        "Dose on CT",
        structures=report.structures,
        colors=report.colors(),
        dose_kji=report.dose,
        isodose_gy=report.isodose_levels_gy,
        prescription_gy=report.prescription_gy,
        legend=legend,
        position_known=report.position_known,
    )[1]


def _metrics_table(ax, metrics: dict, loc: str, font_size: int):
    """The per-structure :data:`REPORT_METRICS` as a table on ``ax`` (None when there are no structures)."""
    rows = [[name] + [f"{m.get(k, float('nan')):.2f}" for k in REPORT_METRICS] for name, m in metrics.items()]
    if not rows:
        return None
    table = ax.table(cellText=rows, colLabels=["Structure", *REPORT_METRICS], loc=loc)
    table.auto_set_font_size(False)
    table.set_fontsize(font_size)
    return table


def _summary_lines(report: PlanReport) -> list[str]:
    lines = [f"{k}: {v}" for k, v in (report.info or {}).items()]
    lines += [f"{k} = {v:.3f}" for k, v in (report.plan_indices or {}).items()]
    top = float(report.dose.max()) if report.dose.size else 0.0
    lines.append(f"Maximum dose (grid): {top:.2f} Gy")
    if report.isodose_levels_gy:
        ref = report.prescription_gy
        lines.append(
            "Isodose lines: "
            + ", ".join(
                f"{v:.1f} Gy" + (f" ({100 * v / ref:.0f}%)" if ref else "") for v in sorted(report.isodose_levels_gy)
            )
        )
    return lines


def _new_page(layout=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=PAGE_SIZE_IN, layout=layout)


def report_png_figure(report: PlanReport):
    """The one-page report figure (A4 landscape): axial dose panel, DVH, metric table. The caller closes it."""
    fig = _new_page()
    grid = fig.add_gridspec(
        2, 2, height_ratios=[3, 1.2], left=0.04, right=0.97, top=0.9, bottom=0.02, wspace=0.25, hspace=0.45
    )
    _dose_panel(fig, fig.add_subplot(grid[0, 0]), report, "axial")
    ax_dvh = fig.add_subplot(grid[0, 1])
    figures.draw_dvh(ax_dvh, report.curves, report.colors(), report.prescription_gy)
    ax_dvh.set_title("Cumulative DVH")
    ax_tab = fig.add_subplot(grid[1, :])
    ax_tab.axis("off")
    _metrics_table(ax_tab, report.metrics, "center", 8)
    if report.plan_indices:
        ax_tab.set_title("  ".join(f"{k} = {v:.3f}" for k, v in report.plan_indices.items()), fontsize=9)
    fig.suptitle(report.title)
    return fig


def pdf_page_figures(report: PlanReport) -> list:
    """The PDF's pages as figures, all A4 landscape: summary, three dose planes, DVH. The caller closes them."""
    summary = _new_page()
    summary.suptitle(report.title, fontsize=14)
    summary.text(0.06, 0.9, "\n".join(_summary_lines(report)), va="top", fontsize=10, family="monospace")
    ax = summary.add_axes([0.04, 0.05, 0.92, 0.55])
    ax.axis("off")
    table = _metrics_table(ax, report.metrics, "upper center", 8)
    if table is not None:
        table.scale(1.0, 1.3)
    ax.set_title("Dose metrics (Gy, cc)", fontsize=11)

    planes = _new_page("constrained")
    axes = planes.subplots(2, 2).ravel()
    for axis, plane in zip(axes, figures.PLANES):
        handles = _dose_panel(planes, axis, report, plane, legend=False)
    axes[3].axis("off")
    for handle in handles:  # one legend for three planes: whether a structure is in one slice is not its business
        handle.set_label(handle.get_label().replace(" (not in slice)", ""))
    axes[3].legend(
        handles=handles,
        loc="center",
        fontsize=9,
        title="Structures and isodose lines",
        facecolor=figures.LEGEND_FACE,
        framealpha=1.0,
        ncol=2 if len(handles) > 12 else 1,
    )
    target = f" through the largest section of {report.target}" if report.target in report.structures else ""
    planes.suptitle(f"{report.title}: dose{target}")

    dvh_page = _new_page()
    ax = dvh_page.add_subplot(1, 1, 1)
    figures.draw_dvh(ax, report.curves, report.colors(), report.prescription_gy, legend_size=9)
    ax.set_title(f"{report.title}: cumulative DVH")
    return [summary, planes, dvh_page]


def write_report_png(path, report: PlanReport) -> Path:
    """Write the one-page report as PNG (or any format matplotlib infers from the suffix)."""
    import matplotlib.pyplot as plt

    fig = report_png_figure(report)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report_pdf(path, report: PlanReport) -> tuple[Path, int]:
    """Write the three-page PDF (every page A4 landscape); returns (path, number of pages)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = pdf_page_figures(report)
    with PdfPages(path) as pdf:
        for fig in pages:
            pdf.savefig(fig)
            plt.close(fig)
        meta = pdf.infodict()
        meta["Title"] = report.title
        meta["Creator"] = "MedAI"
    return path, len(pages)


# --- array-view entry points (the plan Logic's) ------------------------------------------------------------
def sar_orientation(direction_ras: np.ndarray) -> tuple[list[int], list[int]]:
    """Axis permutation and flips that turn a KJI array with this RAS direction matrix (columns: i, j,
    k axes) into one whose axes run Superior, Anterior, Right (for axis-aligned grids; else identity).

    Use as ``np.flip(np.transpose(a, perm), flips)``.
    """
    d = np.asarray(direction_ras, float)
    column = {0: 2, 1: 1, 2: 0}  # array axis (k, j, i) -> direction column
    dominant = [int(np.argmax(np.abs(d[:, column[a]]))) for a in range(3)]
    if sorted(dominant) != [0, 1, 2]:
        return [0, 1, 2], []
    perm = [0, 0, 0]
    for a, ras in enumerate(dominant):
        perm[2 - ras] = a  # R -> output axis 2, A -> 1, S -> 0
    flips = [o for o in range(3) if d[dominant[perm[o]], column[perm[o]]] < 0]
    return perm, flips


def orthogonal_slices(volume: np.ndarray, center_kji) -> dict:
    """Axial (J x I), coronal (K x I) and sagittal (K x J) slices of a KJI volume through ``center_kji``."""
    k, j, i = (int(np.clip(c, 0, n - 1)) for c, n in zip(center_kji, volume.shape))
    return {"axial": volume[k], "coronal": volume[:, j, :], "sagittal": volume[:, :, i]}


def write_plan_report(
    path,
    ct_slice: np.ndarray,
    dose_slice: np.ndarray,
    curves: dict,
    metrics: dict,
    title: str = "MedAI plan report",
    isodose_levels_gy=(),
    plan_indices: dict | None = None,
    prescription_gy: float | None = None,
) -> Path:
    """One-page report from an axial CT and dose slice already in radiological display (anterior up, patient
    right on the left), as :func:`sar_orientation` views flipped in both axes give; 1 mm pixels assumed.
    Prefer :func:`write_report_png` with a :class:`PlanReport`, which also outlines the structures."""
    dose = np.asarray(dose_slice, float)[::-1, ::-1][None]
    ct = np.asarray(ct_slice, float)[::-1, ::-1][None]
    report = PlanReport(
        dose,
        Geometry(shape_kji=dose.shape),
        curves,
        metrics,
        ct if ct.shape == dose.shape else None,
        isodose_levels_gy=tuple(isodose_levels_gy),
        prescription_gy=prescription_gy,
        plan_indices=plan_indices,
        title=title,
        position_known=False,
    )
    return write_report_png(path, report)


def write_plan_report_pdf(
    path,
    dose: np.ndarray,
    spacing_ijk,
    curves: dict,
    metrics: dict,
    ct=None,
    center_kji=None,
    title: str = "MedAI plan report",
    isodose_levels_gy=(),
    plan_indices: dict | None = None,
    info: dict | None = None,
    prescription_gy: float | None = None,
) -> tuple[Path, int]:
    """Three-page PDF from a KJI dose whose axes run Superior, Anterior, Right (see :func:`sar_orientation`),
    ``spacing_ijk`` (mm) and ``ct``: HU on the same grid or the dict of :func:`orthogonal_slices` through
    ``center_kji`` (default: the dose maximum). Prefer :func:`write_report_pdf` with a :class:`PlanReport`."""
    dose = np.asarray(dose, float)
    if center_kji is None:
        center_kji = np.unravel_index(int(np.argmax(dose)), dose.shape)
    if isinstance(ct, dict):  # three slices through the centre: a volume that holds just them
        k, j, i = (int(c) for c in center_kji)
        volume = np.full(dose.shape, -1000.0)
        volume[k], volume[:, j, :], volume[:, :, i] = ct["axial"], ct["coronal"], ct["sagittal"]
        ct = volume
    ct = np.asarray(ct, float) if ct is not None and np.shape(ct) == dose.shape else None
    report = PlanReport(
        dose,
        Geometry(spacing_ijk, shape_kji=dose.shape),
        curves,
        metrics,
        ct,
        isodose_levels_gy=tuple(isodose_levels_gy),
        prescription_gy=prescription_gy,
        plan_indices=plan_indices,
        info=info,
        title=title,
        centre_kji=tuple(center_kji),
        position_known=False,
    )
    return write_report_pdf(path, report)
