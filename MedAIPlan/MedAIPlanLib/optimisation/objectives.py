"""Plan objectives: what the fluence optimisation asks of each structure (matRad's definitions).

``Objective(structure, type, dose, penalty, volume)``; ``type`` is one of :data:`OBJECTIVE_TYPES`
(doses in Gy of the whole plan, ``volume`` in % for the DVH objectives). The formulas are in
:mod:`fluence` (see its docstring) and evaluated by :mod:`objective_matrix` / :mod:`objective_kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
