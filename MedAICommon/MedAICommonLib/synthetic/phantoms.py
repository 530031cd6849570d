"""Synthetic CT phantoms with known anatomy, for the demo and for tests (no downloads).

The phantom is a torso-like ellipse with lungs, a spine, a liver-like organ and a small
spherical lesion, in HU, with structure label maps, on a grid of chosen spacing/orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Geometry

STRUCTURES = {1: "body", 2: "lung_left", 3: "lung_right", 4: "spine", 5: "liver", 6: "lesion"}
"""Label value -> structure name."""
STRUCTURE_HU = {1: 20.0, 2: -820.0, 3: -820.0, 4: 700.0, 5: 60.0, 6: 110.0}
STRUCTURE_COLORS = {
    1: (0.89, 0.75, 0.64),
    2: (0.77, 0.69, 0.50),
    3: (0.77, 0.69, 0.50),
    4: (0.95, 0.95, 0.85),
    5: (0.87, 0.51, 0.32),
    6: (0.90, 0.10, 0.10),
}


@dataclass
class Phantom:
    """A synthetic CT (HU, float32 KJI), its structure labels (uint8 KJI) and geometry (RAS)."""

    ct: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    names: dict

    @property
    def lesion_center_ras(self) -> np.ndarray:
        """RAS centroid (mm) of the lesion."""
        kji = np.argwhere(self.labels == 6).mean(axis=0)
        return self.geometry.index_to_point(kji[::-1])


def make_ct_phantom(
    shape_kji=(48, 96, 96),
    spacing=(3.0, 3.0, 4.0),
    direction=None,
    origin=None,
    noise_hu: float = 15.0,
    seed: int = 0,
    lesion_center_mm=(40.0, -10.0, 5.0),
    lesion_radius_mm: float = 12.0,
) -> Phantom:
    """Make a torso phantom centred on the RAS origin.

    Structures are defined in physical RAS millimetres, so the anatomy is the same whatever the
    grid's spacing or direction. ``lesion_center_mm`` is relative to the phantom centre (RAS).
    """
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    extent = (np.array(shape_kji[::-1]) - 1) * np.array(spacing)
    if origin is None:
        origin = -(direction @ (extent / 2.0))
    geometry = Geometry(spacing, origin, direction, "RAS", tuple(shape_kji))
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    ras = geometry.index_to_point(ijk).reshape(*shape_kji, 3)
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    labels = np.zeros(shape_kji, dtype=np.uint8)
    body = (x / 130.0) ** 2 + (y / 95.0) ** 2 <= 1.0
    labels[body] = 1
    # RAS: +x points to the patient's right, so lung_left sits at -x and the liver at +x.
    for value, sign in ((2, -1.0), (3, 1.0)):
        lung = ((x - sign * 55.0) / 40.0) ** 2 + ((y + 5.0) / 50.0) ** 2 + (z / 80.0) ** 2 <= 1.0
        labels[lung & body] = value
    labels[(x**2 + (y + 65.0) ** 2 <= 14.0**2) & body] = 4
    liver = ((x - 40.0) / 45.0) ** 2 + ((y + 5.0) / 40.0) ** 2 + ((z + 40.0) / 35.0) ** 2 <= 1.0
    labels[liver & body & (labels == 1)] = 5
    c = np.asarray(lesion_center_mm, float)
    lesion = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= lesion_radius_mm**2
    labels[lesion & body] = 6
    ct = np.full(shape_kji, -1000.0, dtype=np.float32)
    for value, hu in STRUCTURE_HU.items():
        ct[labels == value] = hu
    rng = np.random.default_rng(seed)
    ct += rng.normal(0.0, noise_hu, size=ct.shape).astype(np.float32)
    return Phantom(ct=ct, labels=labels, geometry=geometry, names=dict(STRUCTURES))
