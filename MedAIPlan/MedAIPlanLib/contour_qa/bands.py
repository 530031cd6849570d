"""DVH bands from a model's probability map, and clinical constraints checked against them.

A structure's probability map (KJI, values 0..1, on its own grid ``probability_geometry``) is cut at several
probability levels (default 0.25 / 0.5 / 0.75): each cut ``p >= level`` is a contour the model finds
plausible, and its DVH (:func:`MedAIPlanLib.evaluation.dose_metrics.mask_metrics`, the DVH of ``medai dvh``) gives
Dmean, D95, D2, D0.03cc ... in Gy. The band of a statistic is [lowest, highest] over the levels; the
*nominal* value is the one at the level nearest 0.5, so ``low <= nominal <= high`` always holds. A map of
only 0 and 1 gives the same contour at every level (zero width); sharper maps give narrower bands.

Constraints are written ``"Liver:Dmean<30"``, ``"spinal_cord:D0.03cc<45"``, ``"PTV:D95>=57"`` (Gy).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from MedAICommonLib import notices

from .labels import name_key
from .metrics import DOSE_KEYS, dose_statistics

DEFAULT_LEVELS = (0.25, 0.5, 0.75)
BAND_STATS = ("Dmean", "D95", "D2", "D0.03cc", "D98", "D50")


def check_levels(levels) -> tuple[float, ...]:
    """The probability levels, sorted; ``ValueError`` unless each lies in (0, 1]."""
    levels = tuple(sorted(float(v) for v in levels))
    if not levels or not all(0.0 < v <= 1.0 for v in levels):
        raise ValueError(f"Probability levels must lie in (0, 1], e.g. 0.25,0.5,0.75; got {list(levels)}.")
    return levels


def _checked_probability(probability: np.ndarray, name: str) -> np.ndarray:
    """The map as float32; a map outside [0, 1] is refused (a label map or logits given by mistake)."""
    p = np.asarray(probability, dtype=np.float32)
    low, high = float(np.nanmin(p)), float(np.nanmax(p))
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise ValueError(
            f"The probability map of '{name}' has values {low:g}..{high:g}, outside 0..1; give the "
            "probabilities (medai segment --probabilities), not a label map or logits."
        )
    return p


def probability_band(
    dose,
    dose_geometry,
    probability: np.ndarray,
    probability_geometry,
    levels=DEFAULT_LEVELS,
    oversampling: int = 2,
    name: str = "structure",
) -> dict:
    """Band of one structure: ``{"levels", "nominal_level", "per_level": {level: stats}, "nominal": stats,
    "<stat>_band_Gy": [low, high] for each of :data:`BAND_STATS`, "volume_band_cc": [low, high]}``.

    ``dose`` (Gy, KJI) on ``dose_geometry``; ``probability`` (KJI, 0..1) on ``probability_geometry``.
    """
    levels = check_levels(levels)
    p = _checked_probability(probability, name)
    nominal_level = min(levels, key=lambda v: (abs(v - 0.5), v))
    per_level = {}
    for level in levels:
        stats = dose_statistics(dose, dose_geometry, p >= level, probability_geometry, (), oversampling)
        per_level[level] = {s: float(stats.get(DOSE_KEYS[s], math.nan)) for s in BAND_STATS}
        per_level[level]["volume_cc"] = float(stats["volume_cc"])
    out = {
        "levels": list(levels),
        "nominal_level": nominal_level,
        "per_level": {f"{k:g}": v for k, v in per_level.items()},
        "nominal": per_level[nominal_level],
    }
    for stat in (*BAND_STATS, "volume_cc"):
        values = [v[stat] for v in per_level.values() if math.isfinite(v[stat])]
        key = "volume_band_cc" if stat == "volume_cc" else f"{stat}_band_Gy"
        out[key] = [min(values), max(values)] if values else [math.nan, math.nan]
    if not per_level[nominal_level]["volume_cc"]:
        notices.warn(
            f"The probability map of '{name}' reaches {nominal_level:g} nowhere: the structure is empty "
            "at the nominal level, so its band is partial or undefined."
        )
    return out


@dataclass(frozen=True)
class Constraint:
    """A dose constraint ``structure:stat<limit`` (or ``<=``, ``>``, ``>=``), limit in Gy."""

    structure: str
    stat: str
    op: str
    limit_gy: float

    @property
    def text(self) -> str:
        """As written: ``Liver:Dmean<30``."""
        return f"{self.structure}:{self.stat}{self.op}{self.limit_gy:g}"

    def met(self, value: float) -> bool | None:
        """Whether ``value`` (Gy) meets it; None for a missing value."""
        if not math.isfinite(value):
            return None
        return {
            "<": value < self.limit_gy,
            "<=": value <= self.limit_gy,
            ">": value > self.limit_gy,
            ">=": value >= self.limit_gy,
        }[self.op]


_CONSTRAINT = re.compile(
    r"^\s*(?P<s>[^:]+?)\s*:\s*(?P<m>[A-Za-z0-9.]+?)\s*(?P<op><=|>=|<|>)\s*(?P<v>[-+0-9.eE]+)"
    r"\s*(Gy)?\s*$"
)


def parse_constraint(text: str) -> Constraint:
    """A :class:`Constraint` from ``"Liver:Dmean<30"``; ``ValueError`` naming the accepted forms."""
    match = _CONSTRAINT.match(text or "")
    aliases = {name_key(k): k for k in BAND_STATS} | {"dmax": "D0.03cc"}
    stat = aliases.get(name_key(match.group("m"))) if match else None
    if not match or stat is None:
        raise ValueError(
            f"Constraint {text!r} not understood; write STRUCTURE:STAT<LIMIT with STAT one of "
            f"{', '.join(BAND_STATS)} (Dmax = D0.03cc), an operator <, <=, > or >= and a limit in Gy, "
            "e.g. 'liver:Dmean<30'."
        )
    return Constraint(match.group("s"), stat, match.group("op"), float(match.group("v")))


def check_band(band: dict, constraint: Constraint) -> dict:
    """How a band meets a constraint: at the nominal level, at both ends, and whether the band crosses it."""
    low, high = band[f"{constraint.stat}_band_Gy"]
    nominal = band["nominal"][constraint.stat]
    ends = [constraint.met(low), constraint.met(high)]
    crosses = None if None in ends else ends[0] != ends[1]
    return {
        "constraint": constraint.text,
        "nominal_Gy": nominal,
        "band_Gy": [low, high],
        "met_at_nominal": constraint.met(nominal),
        "band_crosses": crosses,
    }


def constraints_for(name: str, constraints) -> list[Constraint]:
    """The constraints that name structure ``name`` (names compared as in :func:`labels.name_key`)."""
    return [c for c in constraints if name_key(c.structure) == name_key(name)]
