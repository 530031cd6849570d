"""Small plan-quality figures for optimisation and tests: Dx, mean/max per structure, 3D gamma.

(The product DVH and gamma analysis live in :mod:`dvh` and :mod:`gamma`, and every reported figure,
``medai plan``'s included, comes from :func:`dose_metrics.mask_metrics` / :mod:`dose_metrics`; these
helpers are kept independent so the dose engine can be checked on its own.) Doses in Gy, distances in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dose_at_volume(dose: np.ndarray, mask: np.ndarray, percent: float) -> float:
    """D{percent}: the minimum dose to the hottest ``percent`` % of the structure's voxels."""
    return _dose_at_volume_sorted(np.sort(np.asarray(dose)[np.asarray(mask, bool)]), percent)


def _dose_at_volume_sorted(ascending: np.ndarray, percent: float) -> float:
    if ascending.size == 0:
        return float("nan")
    n = max(1, int(np.ceil(ascending.size * percent / 100.0)))
    return float(ascending[ascending.size - min(n, ascending.size)])


def structure_stats(dose: np.ndarray, mask: np.ndarray) -> dict:
    """Mean, max, min, D95, D50, D2 (Gy) of a structure."""
    d = np.asarray(dose)[np.asarray(mask, bool)]
    if d.size == 0:
        return {"voxels": 0}
    d.sort()  # once for the three dose-volume points
    return {
        "voxels": int(d.size),
        "Dmean_Gy": float(d.mean(dtype=np.float64)),
        "Dmax_Gy": float(d[-1]),
        "Dmin_Gy": float(d[0]),
        "D95_Gy": _dose_at_volume_sorted(d, 95),
        "D50_Gy": _dose_at_volume_sorted(d, 50),
        "D2_Gy": _dose_at_volume_sorted(d, 2),
    }


def gamma_pass_rate(
    reference: np.ndarray,
    evaluated: np.ndarray,
    spacing_kji,
    dose_percent: float = 2.0,
    dta_mm: float = 2.0,
    threshold_percent: float = 10.0,
    step_fraction: float = 0.2,
) -> float:
    """Global 3D gamma pass rate (%) of ``evaluated`` against ``reference`` (same KJI grid).

    Dose criterion ``dose_percent`` % of the reference maximum; reference voxels below
    ``threshold_percent`` % of the maximum are skipped. The evaluated dose is interpolated
    trilinearly on a sphere of offsets (step ``step_fraction`` x DTA, radius 2 x DTA).
    """
    ref = np.asarray(reference, float)
    ev = np.asarray(evaluated, float)
    if ref.shape != ev.shape:
        raise ValueError("Gamma needs the two doses on the same grid.")
    dmax = ref.max()
    dd = dose_percent / 100.0 * dmax
    sel = np.argwhere(ref >= threshold_percent / 100.0 * dmax)
    if len(sel) == 0:
        return float("nan")
    sp = np.asarray(spacing_kji, float)
    step = step_fraction * dta_mm
    n = int(np.ceil(2 * dta_mm / step))
    axis = np.arange(-n, n + 1) * step
    off = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    r2 = (off**2).sum(1)
    off, r2 = off[r2 <= (2 * dta_mm) ** 2], r2[r2 <= (2 * dta_mm) ** 2]
    order = np.argsort(r2)
    off, r2 = off[order], r2[order]
    dref = ref[tuple(sel.T)]
    best = np.full(len(sel), np.inf)
    for o, rr in zip(off, r2):
        if rr / dta_mm**2 >= 1.0 and np.all(best <= 1.0):
            break
        coords = (sel + o / sp).T
        val = ndimage.map_coordinates(ev, coords, order=1, mode="nearest")
        best = np.minimum(best, rr / dta_mm**2 + (val - dref) ** 2 / dd**2)
    return float(100.0 * np.mean(best <= 1.0))
