"""Per-structure comparison of a candidate contour with a reference on one dose, and dose-relevance flags.

Masks are boolean KJI arrays on one grid (``mask_geometry``, RAS or LPS, spacing mm); the dose is a KJI array
in Gy on ``dose_geometry`` (any grid in the same frame). Geometry: Dice and HD95 from
:func:`MedAISegLib.postprocessing.evaluation.binary_metrics`, surface Dice from :mod:`.surface`. Dose: every statistic comes
from :func:`MedAIPlanLib.evaluation.dose_metrics.mask_metrics` (the DVH of ``medai dvh``), and each ``delta_*`` is
candidate minus reference.

Dose relevance (defaults in :class:`Thresholds`, all configurable): a structure is *dose-relevant* when
|delta Dmean| > 1 Gy or > 3 % of the prescription, |delta D0.03cc| > 2 Gy or > 5 % of the prescription, or,
for the plan target, |delta D95| > 2 % of the prescription (of the reference D95 without one). Its
``relevance`` is the largest |delta| divided by its threshold (> 1: relevant); tables are sorted by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from MedAISegLib.postprocessing.evaluation import binary_metrics

from MedAIPlanLib.evaluation import dose_metrics
from .surface import surface_distances_mm, surface_dice, union_box

DOSE_KEYS = {
    "Dmean": "Dmean_Gy",
    "D95": "D95_Gy",
    "D2": "D2_Gy",
    "D0.03cc": "Dmax_Gy",
    "D98": "D98_Gy",
    "D50": "D50_Gy",
}
"""Dose statistic name -> key of :func:`dose_metrics.structure_metrics` (D0.03cc is its ``Dmax_Gy``)."""
DELTAS = ("Dmean", "D95", "D2", "D0.03cc")


@dataclass
class Thresholds:
    """When a dose difference is *dose-relevant* (|delta| above the smaller of the two limits given).

    ``dmean_gy``/``dmean_percent``: |delta Dmean| in Gy / in % of the prescription (every structure);
    ``dmax_gy``/``dmax_percent``: |delta D0.03cc| likewise; ``target_d95_percent``: |delta D95| of the plan
    target in % of the prescription (or of the target's reference D95 without a prescription).
    """

    dmean_gy: float = 1.0
    dmean_percent: float = 3.0
    dmax_gy: float = 2.0
    dmax_percent: float = 5.0
    target_d95_percent: float = 2.0

    def limits_gy(self, prescription_gy: float | None, reference_d95_gy: float | None = None) -> dict[str, float]:
        """The limits in Gy: ``{"Dmean": ..., "D0.03cc": ..., "D95 (target)": ...}``."""
        rx = prescription_gy if prescription_gy and prescription_gy > 0 else None
        out = {
            "Dmean": min(self.dmean_gy, self.dmean_percent / 100.0 * rx) if rx else self.dmean_gy,
            "D0.03cc": min(self.dmax_gy, self.dmax_percent / 100.0 * rx) if rx else self.dmax_gy,
        }
        base = rx or reference_d95_gy
        if base:
            out["D95 (target)"] = self.target_d95_percent / 100.0 * base
        return out


def _crop(reference: np.ndarray, candidate: np.ndarray):
    """Both masks on the bounding box of their union (plus one voxel): the same surfaces, less work."""
    box = union_box(reference, candidate)
    return (reference, candidate) if box is None else (reference[box], candidate[box])


def geometric_metrics(reference: np.ndarray, candidate: np.ndarray, spacing, tolerance_mm: float = 2.0) -> dict:
    """``dice``, ``hd95_mm`` (MedAISeg's evaluation) and ``surface_dice`` at ``tolerance_mm`` of two KJI masks."""
    ref, cand = _crop(np.asarray(reference, bool), np.asarray(candidate, bool))
    base = binary_metrics(cand, ref, spacing)
    distances = surface_distances_mm(cand, ref, spacing)
    return {
        "dice": base["dice"],
        "hd95_mm": base["hd95_mm"],
        "surface_dice": surface_dice(cand, ref, spacing, tolerance_mm, distances),
        "surface_dice_tolerance_mm": float(tolerance_mm),
    }


def dose_statistics(
    dose: np.ndarray, dose_geometry, mask: np.ndarray, mask_geometry, v_doses_gy=(), oversampling: int = 2
) -> dict:
    """Dose statistics (Gy, cc, %) of a mask, from :func:`dose_metrics.mask_metrics` (one DVH implementation)."""
    return dose_metrics.mask_metrics(dose, dose_geometry, mask, mask_geometry, oversampling, tuple(v_doses_gy))


def dose_deltas(reference: dict, candidate: dict, v_doses_gy=()) -> dict:
    """``delta_<stat>_Gy`` (candidate minus reference) for :data:`DELTAS` and ``delta_V<x>Gy_percent``."""
    out = {}
    for name in DELTAS:
        key = DOSE_KEYS[name]
        out[f"delta_{name}_Gy"] = float(candidate.get(key, math.nan)) - float(reference.get(key, math.nan))
    for d in v_doses_gy:
        key = f"V{d:g}Gy_percent"
        out[f"delta_V{d:g}Gy_percent"] = float(candidate.get(key, math.nan)) - float(reference.get(key, math.nan))
    return out


def relevance(row: dict, limits_gy: dict, is_target: bool) -> tuple[float, list[str]]:
    """The largest |delta| / limit of a row, and the reasons (each delta over its limit, in words)."""
    checks = [
        ("Dmean", row["delta_Dmean_Gy"], limits_gy["Dmean"]),
        ("D0.03cc", row["delta_D0.03cc_Gy"], limits_gy["D0.03cc"]),
    ]
    if is_target and "D95 (target)" in limits_gy:
        checks.append(("D95", row["delta_D95_Gy"], limits_gy["D95 (target)"]))
    score, reasons = 0.0, []
    for name, delta, limit in checks:
        if not (math.isfinite(delta) and limit > 0):
            continue
        ratio = abs(delta) / limit
        score = max(score, ratio)
        if ratio > 1.0:
            reasons.append(f"delta {name} {delta:+.2f} Gy exceeds {limit:.2f} Gy")
    return score, reasons


def compare_structure(
    dose,
    dose_geometry,
    reference: np.ndarray,
    candidate: np.ndarray,
    mask_geometry,
    v_doses_gy=(),
    tolerance_mm: float = 2.0,
    thresholds: Thresholds | None = None,
    prescription_gy: float | None = None,
    is_target: bool = False,
    oversampling: int = 2,
) -> dict:
    """One table row: geometry, both structures' dose statistics, their deltas, relevance and flag.

    ``reference``/``candidate``: boolean KJI masks on ``mask_geometry``; ``dose`` (Gy, KJI) on
    ``dose_geometry``; ``thresholds`` (default :class:`Thresholds`) with ``prescription_gy`` give the limits.
    """
    row = geometric_metrics(reference, candidate, mask_geometry.spacing, tolerance_mm)
    ref = dose_statistics(dose, dose_geometry, reference, mask_geometry, v_doses_gy, oversampling)
    cand = dose_statistics(dose, dose_geometry, candidate, mask_geometry, v_doses_gy, oversampling)
    row.update(
        {
            "volume_reference_cc": ref["volume_cc"],
            "volume_candidate_cc": cand["volume_cc"],
            "reference": ref,
            "candidate": cand,
            "is_target": bool(is_target),
        }
    )
    row.update(dose_deltas(ref, cand, v_doses_gy))
    limits = (thresholds or Thresholds()).limits_gy(prescription_gy, ref.get("D95_Gy") if is_target else None)
    score, reasons = relevance(row, limits, is_target)
    row.update(
        {"relevance": score, "dose_relevant": bool(score > 1.0), "relevance_reasons": reasons, "limits_gy": limits}
    )
    return row


def ranked(rows: dict[str, dict]) -> list[str]:
    """Structure names by decreasing dose relevance (then increasing Dice); rows without dose last."""

    def key(name):
        r = rows[name]
        score = r.get("relevance", 0.0)
        return (-(score if math.isfinite(score) else -1.0), r.get("dice", 1.0))

    return sorted(rows, key=key)
