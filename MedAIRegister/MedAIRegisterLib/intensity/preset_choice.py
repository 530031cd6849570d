"""The registration preset for a pair of images, chosen from what they are (``--preset auto``).

A volume's modality comes from its DICOM Modality attribute when it has one, else from its intensities:
CT (in HU) has air at about -1000 HU (and bone above +1000); MR, with arbitrary positive units, has neither.
Arrays are intensities in any order (KJI as read); no geometry is needed.
"""

from __future__ import annotations

import numpy as np

from MedAIRegisterLib.intensity.intensity_registration import PRESETS

AIR_HU = (-1100.0, -900.0)
MIN_AIR_SHARE = 0.005
"""Share of voxels in the air window that marks a CT (0.5 %: the outside of a body, lungs, sinuses)."""

MODALITY_ALIASES = {"PET": "PT", "MRI": "MR", "CBCT": "CT"}

PAIR_PRESETS = {
    frozenset({"CT"}): "ct-ct",
    frozenset({"CT", "MR"}): "ct-mr-head",
    frozenset({"MR"}): "mr-mr-brain",
    frozenset({"PT", "CT"}): "pet-ct",
}


def image_modality(array: np.ndarray, dicom_modality: str | None = None) -> tuple[str, str]:
    """(modality, why): "CT", "MR", "PT", ... from ``dicom_modality`` (the DICOM Modality attribute) when
    given, else "CT" when at least 0.5 % of the voxels lie in -1100..-900 HU (air) and the brightest are
    above 0 HU, else "MR" (no HU air: MR-like)."""
    if dicom_modality:
        modality = MODALITY_ALIASES.get(dicom_modality.strip().upper(), dicom_modality.strip().upper())
        return modality, f"DICOM modality {modality}"
    values = np.asarray(array)
    step = max(1, values.size // 200000)
    values = values.ravel()[::step].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("The volume has no finite voxels; check the file.")
    air = float(np.mean((values >= AIR_HU[0]) & (values <= AIR_HU[1])))
    if air >= MIN_AIR_SHARE and np.percentile(values, 99.9) > 0.0:
        return "CT", f"CT-like intensities ({air:.1%} of voxels at -1000 HU air, max {values.max():.0f})"
    return "MR", (
        f"MR-like intensities (no -1000 HU air: {air:.1%} of voxels, range {values.min():.0f}..{values.max():.0f})"
    )


def choose_preset(
    fixed: np.ndarray, moving: np.ndarray, fixed_modality: str | None = None, moving_modality: str | None = None
) -> tuple[str, str]:
    """(preset, reason) for registering ``moving`` onto ``fixed`` (intensity arrays; optional DICOM
    modalities): ct-ct for two CTs, ct-mr-head for CT and MR, mr-mr-brain for two MR-like volumes, pet-ct for
    PET and CT, and the multimodal ct-mr-head for any other pair."""
    fixed_kind, fixed_why = image_modality(fixed, fixed_modality)
    moving_kind, moving_why = image_modality(moving, moving_modality)
    preset = PAIR_PRESETS.get(frozenset({fixed_kind, moving_kind}), "ct-mr-head")
    if preset not in PRESETS:
        raise ValueError(f"Preset {preset!r} is missing from PRESETS; the pair table and the presets disagree.")
    return preset, f"fixed: {fixed_why}; moving: {moving_why} -> {preset}"
