"""Plan report as a PNG: axial CT with dose colour-wash and isodose lines, DVH plot and metric table.

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
    ax_dvh = fig.add_subplot(grid[0, 1])
    for name, (dose, volume) in curves.items():
        ax_dvh.plot(dose, volume, label=name)
    ax_dvh.set_xlabel("Dose (Gy)")
    ax_dvh.set_ylabel("Volume (%)")
    ax_dvh.set_ylim(0, 102)
    ax_dvh.grid(alpha=0.3)
    if curves:
        ax_dvh.legend(fontsize=8)
    ax_dvh.set_title("Cumulative DVH")
    ax_tab = fig.add_subplot(grid[1, :])
    ax_tab.axis("off")
    rows = [[name] + [f"{m.get(k, float('nan')):.2f}" for k in REPORT_METRICS] for name, m in metrics.items()]
    if rows:
        table = ax_tab.table(cellText=rows, colLabels=["Structure", *REPORT_METRICS], loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    if plan_indices:
        ax_tab.set_title("  ".join(f"{k} = {v:.3f}" for k, v in plan_indices.items()), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
