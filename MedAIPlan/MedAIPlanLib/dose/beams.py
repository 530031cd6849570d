"""Photon beam geometry with matRad's conventions (all points LPS, mm; angles in degrees).

* Rotation ``R = R_couch(c) @ R_gantry(g)`` with ``R_gantry`` a counter-clockwise rotation about
  LPS z and ``R_couch`` about LPS y (``matRad_getRotationMatrix``). Beam's-eye-view (BEV)
  coordinates ``b`` relate to patient coordinates relative to the isocentre by ``p = R @ b``.
* In BEV the source sits at ``(0, -SAD, 0)`` and the beam travels along +y; gantry 0 irradiates
  from the LPS anterior side (-y), gantry 90 from the patient's left (+x).
* Bixels (one per ray for photons) sit on a square grid of ``bixel_width`` at the isocentre plane
  (BEV y = 0); the grid covers the target's projection (target voxel centres, optionally grown by
  a margin, projected from the source onto the isocentre plane and rounded to the grid).
* The default isocentre is the target's centroid (``matRad_getIsoCenter``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedAICommonLib.geometry import Geometry


def check_angles(angles, what: str = "Gantry angle") -> list[float]:
    """The angles (degrees) as floats; ValueError unless every one is in 0 <= angle < 360.

    Angles are refused rather than wrapped, so that a typo (400 for 40) is not planned silently and the
    angle reported is the angle delivered (DICOM's GantryAngle, PatientSupportAngle and
    BeamLimitingDeviceAngle use the same range). ``what`` starts the message (e.g. ``"--gantry-angles"``).
    """
    values = [float(a) for a in np.atleast_1d(np.asarray(angles, dtype=float))]
    bad = [a for a in values if not 0.0 <= a < 360.0]  # NaN fails the comparison too
    if bad:
        hint = [round(a % 360.0, 6) for a in bad if np.isfinite(a)]
        raise ValueError(
            f"{what}: {', '.join(f'{a:g}' for a in bad)} degrees is outside 0 <= angle < 360. Angles "
            "are refused, not wrapped: give them in that range"
            + (f" ({', '.join(f'{a:g}' for a in hint)}?)." if hint else ".")
        )
    return values


def rotation_matrix(gantry_deg: float, couch_deg: float = 0.0) -> np.ndarray:
    """3x3 matrix mapping BEV vectors to LPS patient vectors (matRad's active rotation)."""
    g, c = np.deg2rad(gantry_deg), np.deg2rad(couch_deg)
    rg = np.array([[np.cos(g), -np.sin(g), 0.0], [np.sin(g), np.cos(g), 0.0], [0.0, 0.0, 1.0]])
    rc = np.array([[np.cos(c), 0.0, np.sin(c)], [0.0, 1.0, 0.0], [-np.sin(c), 0.0, np.cos(c)]])
    return rc @ rg


@dataclass
class Beam:
    """One photon beam: angles (degrees), isocentre (LPS mm), SAD (mm), bixel grid at the iso plane."""

    gantry_deg: float
    couch_deg: float
    isocenter: np.ndarray
    ray_pos: np.ndarray  # (N, 2) BEV (x, z) positions of the bixel centres at the iso plane, mm
    bixel_width: float
    sad: float = 1000.0

    @property
    def rotation(self) -> np.ndarray:
        """BEV -> LPS rotation."""
        return rotation_matrix(self.gantry_deg, self.couch_deg)

    @property
    def source(self) -> np.ndarray:
        """Source position (LPS mm)."""
        return np.asarray(self.isocenter, float) + self.rotation @ np.array([0.0, -self.sad, 0.0])

    @property
    def num_bixels(self) -> int:
        return int(len(self.ray_pos))

    def to_bev(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points -> BEV coordinates relative to the isocentre."""
        return (np.asarray(points_lps, float) - np.asarray(self.isocenter, float)) @ self.rotation

    def ray_targets_lps(self) -> np.ndarray:
        """(N, 3) LPS points on each ray at the isocentre plane."""
        bev = np.column_stack([self.ray_pos[:, 0], np.zeros(len(self.ray_pos)), self.ray_pos[:, 1]])
        return bev @ self.rotation.T + np.asarray(self.isocenter, float)


def voxel_points_lps(geometry: Geometry, mask: np.ndarray | None = None) -> np.ndarray:
    """LPS centres (N, 3) of the voxels of ``mask`` (KJI), or of all voxels when mask is None."""
    g = geometry.to_space("LPS")
    if mask is None:
        kji = np.indices(g.shape_kji).reshape(3, -1).T
    else:
        kji = np.argwhere(mask)
    return g.index_to_point(kji[:, ::-1].astype(float))


def isocenter_of(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Target centroid (LPS mm), as matRad's ``matRad_getIsoCenter``."""
    if mask is None or not np.any(mask):
        raise ValueError("The target structure is empty; choose a target segment with voxels in it.")
    return voxel_points_lps(geometry, mask).mean(axis=0)


def check_isocenter(iso: np.ndarray, geometry: Geometry) -> None:
    """ValueError when the isocentre (LPS) lies outside the CT volume."""
    g = geometry.to_space("LPS")
    ijk = g.point_to_index(np.asarray(iso, float))
    shape_ijk = np.array(g.shape_kji[::-1])
    if np.any(ijk < -0.5) or np.any(ijk > shape_ijk - 0.5):
        raise ValueError(
            f"Isocentre {np.round(iso, 1).tolist()} mm (LPS) lies outside the CT; "
            "give an isocentre inside the image or use the target centroid."
        )


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _grow(mask: np.ndarray, geometry: Geometry, margin_mm: float) -> np.ndarray:
    if margin_mm <= 0:
        return mask
    from scipy import ndimage

    sp = np.array(geometry.spacing)[::-1]  # k, j, i
    r = np.ceil(margin_mm / sp).astype(int)
    zz, yy, xx = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, sp)], indexing="ij")
    ball = zz**2 + yy**2 + xx**2 <= margin_mm**2 + 1e-6
    return ndimage.binary_dilation(mask, structure=ball)


def make_beams(
    target_mask: np.ndarray,
    geometry: Geometry,
    gantry_angles,
    couch_angles=None,
    bixel_width: float = 5.0,
    isocenter=None,
    margin_mm: float = 0.0,
    sad: float = 1000.0,
) -> list[Beam]:
    """Beams with bixel grids covering the target's BEV projection (plus ``margin_mm``)."""
    gantry_angles = check_angles(gantry_angles, "Gantry angle")
    if not gantry_angles:
        raise ValueError("Give at least one gantry angle.")
    couch_angles = [0.0] * len(gantry_angles) if couch_angles is None else check_angles(couch_angles, "Couch angle")
    if len(couch_angles) != len(gantry_angles):
        raise ValueError("Give one couch angle per gantry angle (or none).")
    if not bixel_width or bixel_width <= 0:
        raise ValueError(f"Bixel width must be positive (mm), got {bixel_width}.")
    if target_mask is None or not np.any(target_mask):
        raise ValueError("The target structure is empty; choose a target segment with voxels in it.")
    iso = isocenter_of(target_mask, geometry) if isocenter is None else np.asarray(isocenter, float)
    check_isocenter(iso, geometry)
    points = voxel_points_lps(geometry, _grow(np.asarray(target_mask, bool), geometry, margin_mm))
    beams = []
    for g, c in zip(gantry_angles, couch_angles):
        beam = Beam(g, c, iso, np.zeros((0, 2)), float(bixel_width), float(sad))
        bev = beam.to_bev(points)
        scale = sad / (sad + bev[:, 1])
        proj = np.column_stack([bev[:, 0] * scale, bev[:, 2] * scale])
        grid = _round_half_away(proj / bixel_width) * bixel_width
        beam.ray_pos = np.unique(grid, axis=0)
        beams.append(beam)
    return beams
