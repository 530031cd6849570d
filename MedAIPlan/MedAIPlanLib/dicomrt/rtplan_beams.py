"""MedAI dose-engine beams <-> RTPLAN beams (geometry for export, display and recomputation).

MedAI's beams (:class:`beams.Beam`, matRad conventions) carry gantry and couch angles (degrees,
IEC 61217 as matRad's own DICOM export writes them), the isocentre (LPS mm, = DICOM patient
coordinates), the SAD and a grid of bixels at the isocentre plane in beam's-eye-view coordinates
(x, z). For a STATIC RTPLAN beam:

* jaws: the bixel field's extent, ``X = [min x - w/2, max x + w/2]`` and ``Y = [min z - w/2,
  max z + w/2]`` (mm at the isocentre; BEV x is IEC beam-limiting-device X, BEV z is Y, collimator 0);
* meterset: ``mu_per_weight`` x the sum of the beam's bixel weights (per fraction), or the
  given per-beam MU;
* back from an RTPLAN: a bixel grid of width ``w`` filling the jaw opening, so the beam can be
  recomputed with MedAI's engine.
"""

from __future__ import annotations

import numpy as np

from MedAIPlanLib.dose.beams import Beam


def field_jaws_mm(beam: Beam) -> dict:
    """Jaw positions (mm at the isocentre plane) enclosing the beam's bixels: {'X': [x1, x2], 'Y': [y1, y2]}."""
    if not beam.num_bixels:
        raise ValueError("The beam has no bixels; its field (jaws) is undefined.")
    half = beam.bixel_width / 2.0
    pos = np.asarray(beam.ray_pos, float)
    return {
        "X": [float(pos[:, 0].min() - half), float(pos[:, 0].max() + half)],
        "Y": [float(pos[:, 1].min() - half), float(pos[:, 1].max() + half)],
    }


def rtplan_beams_from_medai(
    beams: list[Beam],
    weights=None,
    beam_of_bixel=None,
    meterset_mu=None,
    mu_per_weight: float = 1.0,
    energy_mv: float = 6.0,
    names=None,
) -> list[dict]:
    """Beam dicts for :func:`dicom_rt_export.rtplan_dataset` from MedAI beams.

    ``weights`` (bixel weights, all beams concatenated in beam order) with ``beam_of_bixel`` (beam index
    per bixel; default: consecutive blocks of each beam's ``num_bixels``) give each beam's meterset
    ``mu_per_weight * sum(weights)``; ``meterset_mu`` (one value per beam) overrides it.
    """
    metersets = [None] * len(beams)
    if meterset_mu is not None:
        metersets = [float(v) for v in np.atleast_1d(meterset_mu)]
        if len(metersets) != len(beams):
            raise ValueError(f"Give one meterset (MU) per beam ({len(beams)}), got {len(metersets)}.")
    elif weights is not None:
        w = np.asarray(weights, float).ravel()
        if beam_of_bixel is None:
            beam_of_bixel = np.repeat(np.arange(len(beams)), [b.num_bixels for b in beams])
        beam_of_bixel = np.asarray(beam_of_bixel, int).ravel()
        if beam_of_bixel.size != w.size:
            raise ValueError(f"{w.size} bixel weights but {beam_of_bixel.size} beam indices.")
        metersets = [float(mu_per_weight * w[beam_of_bixel == b].sum()) for b in range(len(beams))]
    out = []
    for n, (beam, mu) in enumerate(zip(beams, metersets)):
        name = names[n] if names else f"G{beam.gantry_deg:g}" + (f" C{beam.couch_deg:g}" if beam.couch_deg else "")
        out.append(
            {
                "name": name,
                "gantry_deg": float(beam.gantry_deg),
                "couch_deg": float(beam.couch_deg),
                "collimator_deg": 0.0,
                "isocenter_lps": tuple(float(v) for v in beam.isocenter),
                "sad_mm": float(beam.sad),
                "energy_mv": float(energy_mv),
                "meterset_mu": mu,
                "jaws_mm": field_jaws_mm(beam),
            }
        )
    return out


def medai_beams_from_rtplan(rt_beams, bixel_width: float = 5.0) -> list[Beam]:
    """MedAI beams from RTPLAN beams (:class:`dicom_rt.RtBeam`): same angles, isocentre and SAD, a bixel
    grid of ``bixel_width`` filling the jaw opening (default 100 x 100 mm when the plan has no jaws)."""
    if bixel_width <= 0:
        raise ValueError(f"Bixel width must be positive (mm), got {bixel_width}.")
    out = []
    for b in rt_beams:
        jaws = b.jaws_mm or {}
        x = jaws.get("ASYMX") or jaws.get("X") or [-50.0, 50.0]
        y = jaws.get("ASYMY") or jaws.get("Y") or [-50.0, 50.0]
        xs = _centres(x, bixel_width)
        ys = _centres(y, bixel_width)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        ray_pos = np.column_stack([gx.ravel(), gy.ravel()])
        out.append(
            Beam(
                float(b.gantry_deg),
                float(b.couch_deg),
                np.asarray(b.isocenter_lps, float),
                ray_pos,
                float(bixel_width),
                float(b.sad_mm),
            )
        )
    return out


def _centres(limits, width: float) -> np.ndarray:
    lo, hi = float(min(limits)), float(max(limits))
    n = max(1, int(round((hi - lo) / width)))
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n
