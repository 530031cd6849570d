"""Plan objectives: what the fluence optimisation asks of each structure (matRad's definitions).

``Objective(structure, type, dose, penalty, volume)``; ``type`` is one of :data:`OBJECTIVE_TYPES`
(doses in Gy of the whole plan, ``volume`` in % for the DVH objectives). The formulas are in
:mod:`fluence` (see its docstring) and evaluated by :mod:`objective_matrix` / :mod:`objective_kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTIVE_TYPES = ("squared_overdose", "squared_underdose", "squared_deviation", "mean", "max_dvh", "min_dvh")


@dataclass
class Objective:
    """One objective on a structure: ``type`` (see module), ``dose`` (Gy), ``penalty``, ``volume`` (%)."""

    structure: str
    type: str
    dose: float
    penalty: float = 1.0
    volume: float = 50.0

    def __post_init__(self):
        if self.type not in OBJECTIVE_TYPES:
            raise ValueError(f"Unknown objective type {self.type!r}; use one of {', '.join(OBJECTIVE_TYPES)}.")
        if self.dose < 0 or self.penalty < 0:
            raise ValueError("Objective dose and penalty must be non-negative.")


def objective_value_grad(o, d: np.ndarray) -> tuple[float, np.ndarray]:
    """matRad objective ``o`` (see :mod:`fluence`) on doses ``d`` (Gy): (value, d value / d dose)."""
    n = d.size
    if o.type == "squared_overdose":
        r = np.maximum(d - o.dose, 0.0)
        return float(r @ r) / n, 2 * r / n
    if o.type == "squared_underdose":
        r = np.maximum(o.dose - d, 0.0)
        return float(r @ r) / n, -2 * r / n
    if o.type == "squared_deviation":
        r = d - o.dose
        return float(r @ r) / n, 2 * r / n
    if o.type == "mean":
        r = max(float(d.mean()) - o.dose, 0.0)
        return r * r, np.full(n, 2 * r / n)
    dv = float(np.quantile(d, 1 - o.volume / 100.0)) if n > 1 else float(d[0])
    sel = ((d > o.dose) & (d < dv)) if o.type == "max_dvh" else ((d < o.dose) & (d > dv))
    r = np.where(sel, d - o.dose, 0.0)
    return float(r @ r) / n, 2 * r / n
