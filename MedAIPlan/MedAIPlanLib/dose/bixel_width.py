"""How narrow a photon bixel can meaningfully be, for this engine and matRad's 6 MV base data.

* Below :data:`MIN_BIXEL_WIDTH_MM` (1 mm) a bixel is refused. The engine samples the bixel's square
  aperture every 0.5 mm (matRad's ``conv_res``, :func:`pencil_beam.convolve_kernels`), so a 1 mm bixel
  has two samples across, a 0.7 mm one a single 0.5 mm sample, and one under 0.5 mm none at all (its
  kernel, and so its dose, is zero). Physically, a 6 MV beam's penumbra (FWHM 5 mm in
  ``photons_Generic``) and its secondary electrons' range (several mm) blur any finer fluence, and
  multileaf collimators deliver no aperture narrower than their leaves (2.5-10 mm).
* Below the CT's coarsest voxel spacing a warning is given: bixels are placed where the target's
  voxel centres project onto the isocentre plane (:func:`beams.make_beams`, as matRad), so a finer
  bixel grid has gaps between the projected centres instead of covering the target. Below the dose
  grid's spacing too: the dose, and so the optimiser, cannot see fluence modulated more finely.
"""

from __future__ import annotations

import numpy as np

from MedAICommonLib.notices import warn

MIN_BIXEL_WIDTH_MM = 1.0
APERTURE_SAMPLING_MM = 0.5


def bixel_width_refusal(width_mm: float, penumbra_fwhm_mm: float | None = None) -> str | None:
    """Why ``width_mm`` is refused (one sentence naming ``--bixel-width``), or None when it is acceptable."""
    if width_mm >= MIN_BIXEL_WIDTH_MM:
        return None
    samples = int(width_mm // APERTURE_SAMPLING_MM)
    sampled = (
        "no aperture sample at all, so zero dose"
        if samples == 0
        else f"{samples} aperture sample(s) of {APERTURE_SAMPLING_MM:g} mm, so a mis-sized field"
    )
    penumbra = f"{penumbra_fwhm_mm:g} mm" if penumbra_fwhm_mm else "several mm"
    return (
        f"--bixel-width {width_mm:g} mm is below the {MIN_BIXEL_WIDTH_MM:g} mm this 6 MV pencil-beam model can "
        f"represent: the engine samples the aperture every {APERTURE_SAMPLING_MM:g} mm ({sampled}), and the "
        f"beam's {penumbra} penumbra (FWHM) and secondary-electron range blur any finer fluence; use "
        f"--bixel-width {MIN_BIXEL_WIDTH_MM:g} or more (typically 3-10 mm, the MLC leaf width)."
    )


def warn_if_finer_than_ct(width_mm: float, ct_spacing_mm, dose_grid_mm=None) -> None:
    """Warn when ``width_mm`` is below the CT's coarsest voxel spacing (the bixel grid then has gaps) or
    below the dose grid's spacing (``dose_grid_mm``; None: the CT grid)."""
    coarsest = max(float(s) for s in ct_spacing_mm)
    spacing = " x ".join(f"{float(s):g}" for s in ct_spacing_mm)
    if width_mm < coarsest:
        warn(
            f"bixel width {width_mm:g} mm is finer than the CT voxels ({spacing} mm): bixels are placed where the "
            "target's voxel centres project onto the isocentre plane, so the bixel grid has gaps between them "
            f"and the plan has more bixels without a finer fluence; use --bixel-width {coarsest:g} or more."
        )
    elif dose_grid_mm is not None and width_mm < float(np.max(dose_grid_mm)):
        grid = float(np.max(dose_grid_mm))
        warn(
            f"bixel width {width_mm:g} mm is finer than the {grid:g} mm dose grid: the dose, and so the optimiser, "
            f"cannot resolve a finer fluence; use --bixel-width {grid:g} or more, or a finer --dose-grid."
        )


def check_bixel_width(
    width_mm: float, ct_spacing_mm, penumbra_fwhm_mm: float | None = None, dose_grid_mm=None
) -> str | None:
    """The reason ``width_mm`` is refused (:func:`bixel_width_refusal`), or None after warning when it is finer
    than the CT or the dose grid (:func:`warn_if_finer_than_ct`)."""
    refusal = bixel_width_refusal(width_mm, penumbra_fwhm_mm)
    if refusal is None:
        warn_if_finer_than_ct(width_mm, ct_spacing_mm, dose_grid_mm)
    return refusal
