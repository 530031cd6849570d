"""Dose statistics of a structure from its dose samples (see :mod:`dvh`): Dx, Vx, indices.

Definitions (doses in Gy, volumes in cc or %):

* ``D(x%)``: the minimum dose received by the hottest x % of the volume (D98, D95, D50, D2 ...);
  ``D(v cc)``: the same for an absolute volume (Dmax is reported as D0.03cc, ICRU 83).
* ``V(d)``: volume receiving at least d Gy (cc and %).
* Paddick conformity index ``CI = TV_PIV^2 / (TV * PIV)`` (TV target volume, PIV prescription
  isodose volume, TV_PIV target volume inside it).
* ICRU-83 homogeneity index ``HI = (D2 - D98) / D50`` of the target.
* Paddick gradient index ``GI = V(50 % of Rx) / V(Rx)`` (body volumes).
"""

from __future__ import annotations

import numpy as np

from MedAIPlanLib.evaluation.dvh import DoseSamples, mask_samples


_GROUPS_PER_GY = 100_000  # doses within 10 uGy are one group of the cumulative curve (as np.round(dose, 5))


def _chunks(n: int, size: int = 8_000_000):
    """Slices of at most ``size`` samples (bounded temporaries on a body of tens of millions of voxels)."""
    return (slice(a, min(a + size, n)) for a in range(0, n, size))


def _groups(samples: DoseSamples) -> tuple[np.ndarray, np.ndarray]:
    """Distinct doses (Gy, rounded to 10 uGy, increasing) of the samples with weight, and their volumes (cc).

    One weighted ``bincount`` over the rounded doses, chunk by chunk (no sort), when their range is moderate,
    as it is for any dose in Gy; ``np.unique`` otherwise.
    """
    dose = samples.dose
    low, high = (int(np.rint(float(f(dose)) * _GROUPS_PER_GY)) for f in (np.min, np.max))
    size = high - low + 1
    if size > 50_000_000:
        values, inverse = np.unique(np.rint(np.asarray(dose, dtype=np.float64) * _GROUPS_PER_GY), return_inverse=True)
        volume = np.bincount(inverse.ravel(), weights=np.asarray(samples.weight)) / 1000.0
        return values[volume > 0] / _GROUPS_PER_GY, volume[volume > 0]
    volume = np.zeros(size)
    for sl in _chunks(len(dose)):
        index = np.rint(np.asarray(dose[sl], dtype=np.float64) * _GROUPS_PER_GY).astype(np.int64) - low
        volume += np.bincount(index, weights=np.asarray(samples.weight[sl]), minlength=size)
    present = np.flatnonzero(volume > 0)
    return (present + low) / _GROUPS_PER_GY, volume[present] / 1000.0


def mean_dose(samples: DoseSamples) -> float:
    """Volume-weighted mean dose (Gy) of the samples."""
    total = sum(float(np.dot(samples.dose[sl], np.asarray(samples.weight[sl]))) for sl in _chunks(len(samples.dose)))
    return total / float(np.sum(samples.weight))


def _cdf(samples: DoseSamples) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear cumulative DVH: volume positions (cc, increasing) and doses (decreasing).

    Samples of equal dose (within 10 uGy) are grouped; each group sits at the centre of the volume it
    represents; the maximum and minimum sampled doses (zero-weight extreme points included) end the curve.
    """
    values, volume = _groups(samples)
    top, bottom = (float(np.rint(float(f(samples.dose)) * _GROUPS_PER_GY)) / _GROUPS_PER_GY for f in (np.max, np.min))
    cum = np.cumsum(volume[::-1])
    centres = cum - volume[::-1] / 2.0
    pos = np.concatenate([[0.0], centres, [cum[-1] if len(cum) else 0.0]])
    dose = np.concatenate([[top], values[::-1], [bottom]])
    return pos, dose


def doses_at_volumes_cc(samples: DoseSamples, volumes_cc) -> np.ndarray:
    """Minimum doses (Gy) received by the hottest ``volumes_cc`` of the structure (one curve for them all)."""
    volumes_cc = np.asarray(volumes_cc, dtype=float)
    if not len(samples.dose) or samples.volume_cc <= 0:
        return np.full(volumes_cc.shape, np.nan)
    pos, dose = _cdf(samples)
    return np.interp(volumes_cc, pos, dose)


def dose_at_volume_cc(samples: DoseSamples, volume_cc: float) -> float:
    """Minimum dose (Gy) received by the hottest ``volume_cc`` of the structure (interpolated)."""
    return float(doses_at_volumes_cc(samples, [volume_cc])[0])


def dose_at_volume_percent(samples: DoseSamples, percent: float) -> float:
    """Minimum dose (Gy) received by the hottest ``percent`` % of the structure (D95 = percent 95)."""
    return dose_at_volume_cc(samples, samples.volume_cc * percent / 100.0)


def volume_at_dose(samples: DoseSamples, dose_gy: float) -> tuple[float, float]:
    """Volume receiving at least ``dose_gy``: (cc, % of the structure)."""
    cc = float(samples.weight[samples.dose >= dose_gy].sum() / 1000.0)
    total = samples.volume_cc
    return cc, (100.0 * cc / total if total > 0 else float("nan"))


def structure_metrics(samples: DoseSamples, v_doses_gy: tuple[float, ...] = ()) -> dict[str, float]:
    """The standard table row of a structure: volume, Dmean, Dmin, Dmax (D0.03cc), D98/D95/D50/D2, Vx."""
    if not len(samples.dose):
        return {"volume_cc": 0.0, "outside_dose_grid": bool(samples.outside_dose_grid)}
    total = samples.volume_cc
    percents = (98, 95, 50, 2)
    at = doses_at_volumes_cc(samples, [min(0.03, total)] + [total * p / 100.0 for p in percents])
    out = {
        "volume_cc": total,
        "Dmean_Gy": mean_dose(samples),
        "Dmin_Gy": float(samples.dose.min()),
        "Dmax_Gy": float(at[0]),
        "Dmax_point_Gy": float(samples.dose.max()),
        "outside_dose_grid": False,
    }
    for p, value in zip(percents, at[1:]):
        out[f"D{p}_Gy"] = float(value)
    for d in v_doses_gy:
        cc, pct = volume_at_dose(samples, d)
        out[f"V{d:g}Gy_cc"] = cc
        out[f"V{d:g}Gy_percent"] = pct
    return out


def paddick_conformity_index(target: DoseSamples, body: DoseSamples, prescription_gy: float) -> float:
    """Paddick CI = TV_PIV^2 / (TV x PIV); ``body`` samples define the prescription isodose volume."""
    tv = target.volume_cc
    tv_piv, _ = volume_at_dose(target, prescription_gy)
    piv, _ = volume_at_dose(body, prescription_gy)
    if tv <= 0 or piv <= 0:
        return 0.0
    return tv_piv**2 / (tv * piv)


def homogeneity_index(target: DoseSamples) -> float:
    """ICRU-83 homogeneity index (D2 - D98) / D50 of the target."""
    d50 = dose_at_volume_percent(target, 50)
    if not d50 > 0:
        return float("nan")
    return (dose_at_volume_percent(target, 2) - dose_at_volume_percent(target, 98)) / d50


def gradient_index(body: DoseSamples, prescription_gy: float) -> float:
    """Paddick gradient index V(50 % Rx) / V(Rx) over the body samples."""
    v100, _ = volume_at_dose(body, prescription_gy)
    v50, _ = volume_at_dose(body, 0.5 * prescription_gy)
    return v50 / v100 if v100 > 0 else float("inf")


def mask_metrics(
    dose: np.ndarray,
    geometry,
    mask: np.ndarray,
    mask_geometry=None,
    oversampling: int = 2,
    v_doses_gy: tuple[float, ...] = (),
) -> dict[str, float]:
    """:func:`structure_metrics` of a voxel mask (KJI bool on ``mask_geometry``, default the dose grid ``geometry``),
    sampled by :func:`dvh.mask_samples`: the one implementation behind ``medai plan`` and ``medai dvh``."""
    return structure_metrics(mask_samples(dose, geometry, mask, mask_geometry, oversampling), v_doses_gy)


def grid_volume_at_dose_cc(dose, voxel_volume_mm3: float, dose_gy: float) -> float:
    """Volume (cc) of dose-grid voxels receiving at least ``dose_gy`` (for PIV without a body contour)."""
    return float(np.count_nonzero(np.asarray(dose) >= dose_gy) * voxel_volume_mm3 / 1000.0)
