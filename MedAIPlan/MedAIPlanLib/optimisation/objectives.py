"""Plan objectives: what the fluence optimisation asks of each structure (matRad's definitions).

``Objective(structure, type, dose, penalty, volume)``; ``type`` is one of :data:`OBJECTIVE_TYPES`
(doses in Gy of the whole plan, ``volume`` in % for the DVH objectives). Each type's value and
gradient with respect to the structure's voxel doses is written once below, over the array library
of the doses (:func:`namespace_of`: numpy or torch), normalised per voxel as matRad:

* ``squared_overdose``  ``1/N sum max(d - D, 0)^2``; ``squared_underdose`` ``1/N sum max(D - d, 0)^2``
* ``squared_deviation`` ``1/N sum (d - D)^2``; ``mean`` ``max(mean(d) - D, 0)^2``
* ``max_dvh`` (at most ``volume`` % above D): ``1/N sum (d - D)^2`` over voxels with
  D < d < D_volume%; ``min_dvh`` (at least ``volume`` % above D): over voxels with D_volume% < d < D.

The CPU optimiser (:mod:`objective_matrix`, numpy) and the GPU one (:mod:`fluence`, torch) call
:func:`objective_value_grad`. The CPU path also evaluates the three voxel-wise squared objectives
inside its fused numba kernel (:mod:`objective_kernels`), which the tests hold equal to these.
"""

from __future__ import annotations

import sys
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


def namespace_of(x):
    """The array library of ``x``: the ``torch`` module for a torch tensor, ``numpy`` otherwise.

    torch is not imported here: a tensor can only exist once something else has imported it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    return np


def squared_overdose(d, o: Objective):
    """``1/N sum max(d - D, 0)^2`` and its gradient."""
    r = (d - o.dose).clip(min=0.0)
    return (r @ r) / d.shape[0], 2 * r / d.shape[0]


def squared_underdose(d, o: Objective):
    """``1/N sum max(D - d, 0)^2`` and its gradient."""
    r = (o.dose - d).clip(min=0.0)
    return (r @ r) / d.shape[0], -2 * r / d.shape[0]


def squared_deviation(d, o: Objective):
    """``1/N sum (d - D)^2`` and its gradient."""
    r = d - o.dose
    return (r @ r) / d.shape[0], 2 * r / d.shape[0]


def mean_dose(d, o: Objective):
    """``max(mean(d) - D, 0)^2`` and its gradient (the same for every voxel)."""
    r = (d.mean() - o.dose).clip(min=0.0)
    return r * r, namespace_of(d).zeros_like(d) + 2 * r / d.shape[0]


def max_dvh(d, o: Objective):
    """``1/N sum (d - D)^2`` over the voxels with D < d < D_volume% (the dose ``volume`` % of voxels exceed)."""
    return _dvh(d, o, above=True)


def min_dvh(d, o: Objective):
    """``1/N sum (d - D)^2`` over the voxels with D_volume% < d < D."""
    return _dvh(d, o, above=False)


def _dvh(d, o: Objective, above: bool):
    xp = namespace_of(d)
    dv = xp.quantile(d, 1 - o.volume / 100.0)
    sel = ((d > o.dose) & (d < dv)) if above else ((d < o.dose) & (d > dv))
    r = xp.where(sel, d - o.dose, xp.zeros_like(d))
    return (r @ r) / d.shape[0], 2 * r / d.shape[0]


DEFINITIONS = {
    "squared_overdose": squared_overdose,
    "squared_underdose": squared_underdose,
    "squared_deviation": squared_deviation,
    "mean": mean_dose,
    "max_dvh": max_dvh,
    "min_dvh": min_dvh,
}


def objective_value_grad(o: Objective, d):
    """Objective ``o`` on the doses ``d`` (Gy, shape (N,), numpy array or torch tensor, float64):
    (value, d value / d dose), in ``d``'s library and on its device (the value a 0-d array or tensor;
    a numpy value is a float). The penalty is not applied."""
    return DEFINITIONS[o.type](d, o)
