"""Plan reports: a one-page PNG (axial dose wash, DVH, metric table) and a multi-page PDF (summary
and metric table, axial/coronal/sagittal dose overlays, DVH plot).

Works on arrays only: a CT slice and a dose slice (2D, display orientation), DVH curves
``{structure: (dose_gy, volume_percent)}`` and a metrics mapping ``{structure: {metric: value}}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPORT_METRICS = ("volume_cc", "Dmean_Gy", "D98_Gy", "D95_Gy", "D50_Gy", "D2_Gy", "Dmax_Gy")


def write_plan_report(path, ct_slice: np.ndarray, dose_slice: np.ndarray, curves: dict, metrics: dict,
                      title: str = "MedAI plan report", isodose_levels_gy=(), plan_indices: dict | None = None) -> Path:
    """Write the report PNG (or PDF, from the suffix) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    ax_img = fig.add_subplot(grid[0, 0])
    ax_img.imshow(ct_slice, cmap="gray", vmin=-400, vmax=400)
    top = float(np.max(dose_slice)) if np.size(dose_slice) else 0.0
    if top > 0:
        wash = np.ma.masked_where(dose_slice < 0.1 * top, dose_slice)
        im = ax_img.imshow(wash, cmap="jet", alpha=0.4, vmin=0, vmax=top)
        fig.colorbar(im, ax=ax_img, fraction=0.046, label="Dose (Gy)")
        levels = sorted(v for v in isodose_levels_gy if 0 < v < top)
        if levels:
            ax_img.contour(dose_slice, levels=levels, cmap="jet", vmin=0, vmax=top, linewidths=1)
    ax_img.set_title("Axial dose")
    ax_img.axis("off")
    _plot_dvh(fig.add_subplot(grid[0, 1]), curves, "Cumulative DVH", 8)
    ax_tab = fig.add_subplot(grid[1, :])
    ax_tab.axis("off")
    _metrics_table(ax_tab, metrics, "center", 8)
    if plan_indices:
        ax_tab.set_title("  ".join(f"{k} = {v:.3f}" for k, v in plan_indices.items()), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _metrics_table(ax, metrics: dict, loc: str, font_size: int):
    """The per-structure :data:`REPORT_METRICS` as a table on ``ax`` (None when there are no structures)."""
    rows = [[name] + [f"{m.get(k, float('nan')):.2f}" for k in REPORT_METRICS] for name, m in metrics.items()]
    if not rows:
        return None
    table = ax.table(cellText=rows, colLabels=["Structure", *REPORT_METRICS], loc=loc)
    table.auto_set_font_size(False)
    table.set_fontsize(font_size)
    return table


def _plot_dvh(ax, curves: dict, title: str, legend_size: int) -> None:
    """Cumulative DVH curves ``{name: (dose Gy, volume %)}`` on ``ax``."""
    for name, (dose_gy, volume) in curves.items():
        ax.plot(dose_gy, volume, label=name)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=legend_size)
    ax.set_title(title)


def _overlay(ax, ct2d, dose2d, top: float, levels, aspect: float, title: str):
    """One dose colour-wash panel (CT underneath when given) with isodose lines."""
    if ct2d is not None:
        ax.imshow(ct2d, cmap="gray", vmin=-400, vmax=400, aspect=aspect, origin="lower")
    im = None
    if top > 0:
        wash = np.ma.masked_where(dose2d < 0.1 * top, dose2d)
        im = ax.imshow(wash, cmap="jet", alpha=0.45 if ct2d is not None else 1.0, vmin=0, vmax=top,
                       aspect=aspect, origin="lower")
        lv = sorted(v for v in levels if 0 < v < top)
        if lv and min(dose2d.shape) > 1:
            ax.contour(dose2d, levels=lv, cmap="jet", vmin=0, vmax=top, linewidths=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


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


def write_plan_report_pdf(path, dose: np.ndarray, spacing_ijk, curves: dict, metrics: dict, ct: np.ndarray | None = None,
                          center_kji=None, title: str = "MedAI plan report", isodose_levels_gy=(),
                          plan_indices: dict | None = None, info: dict | None = None) -> tuple[Path, int]:
    """Multi-page PDF plan report; returns (path, number of pages).

    Page 1: summary (``info`` lines, plan indices CI/HI/GI, metric table); page 2: dose overlays on
    axial, coronal and sagittal planes through ``center_kji`` (default: the dose maximum), with the CT
    (``ct``: HU on the same KJI grid as ``dose``, or a dict of the three slices as returned by
    :func:`orthogonal_slices`) underneath and isodose lines; page 3: cumulative DVH.
    ``spacing_ijk`` (mm) sets the aspect ratios. Arrays are KJI with axes running Superior, Anterior,
    Right (see :func:`sar_orientation`), shown in radiological convention (patient right on the left,
    anterior up in axial, anterior left in sagittal); dose in Gy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    dose = np.asarray(dose, dtype=float)
    if center_kji is None:
        center_kji = np.unravel_index(int(np.argmax(dose)), dose.shape)
    si, sj, sk = (float(s) for s in spacing_ijk)
    top = float(dose.max()) if dose.size else 0.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = 0
    with PdfPages(path) as pdf:
        fig = plt.figure(figsize=(8.27, 11.69))
        fig.suptitle(title, fontsize=14)
        lines = [f"{k}: {v}" for k, v in (info or {}).items()]
        lines += [f"{k} = {v:.3f}" for k, v in (plan_indices or {}).items()]
        lines.append(f"Maximum dose (grid): {top:.2f} Gy")
        fig.text(0.08, 0.92, "\n".join(lines), va="top", fontsize=10, family="monospace")
        ax = fig.add_axes([0.04, 0.05, 0.92, 0.6])
        ax.axis("off")
        table = _metrics_table(ax, metrics, "upper center", 7)
        if table is not None:
            table.scale(1.0, 1.3)
        ax.set_title("Dose metrics (Gy, cc)", fontsize=11)
        pdf.savefig(fig)
        plt.close(fig)
        pages += 1

        fig, axes = plt.subplots(1, 3, figsize=(11.69, 5.0))
        d = orthogonal_slices(dose, center_kji)
        if isinstance(ct, dict):
            c = ct
        else:
            c = orthogonal_slices(ct, center_kji) if ct is not None and np.shape(ct) == dose.shape else {}
        aspects = {"axial": sj / si, "coronal": sk / si, "sagittal": sk / sj}
        im = None
        for ax, name in zip(axes, ("axial", "coronal", "sagittal")):
            ct2d = c[name][:, ::-1] if name in c else None
            im = _overlay(ax, ct2d, d[name][:, ::-1], top, isodose_levels_gy, aspects[name],
                          f"{name.capitalize()} (slice {center_kji[{'axial': 0, 'coronal': 1, 'sagittal': 2}[name]]})") or im
        if im is not None:
            fig.colorbar(im, ax=list(axes), fraction=0.025, label="Dose (Gy)")
        fig.suptitle(f"{title}: dose overlays" + (f", isodose lines {', '.join(f'{v:.1f}' for v in isodose_levels_gy)} Gy"
                                                   if len(isodose_levels_gy) else ""))
        pdf.savefig(fig)
        plt.close(fig)
        pages += 1

        fig, ax = plt.subplots(figsize=(11.69, 8.27))
        _plot_dvh(ax, curves, f"{title}: cumulative DVH", 9)
        pdf.savefig(fig)
        plt.close(fig)
        pages += 1
        meta = pdf.infodict()
        meta["Title"] = title
        meta["Creator"] = "MedAI"
    return path, pages
