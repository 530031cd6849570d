"""Image geometry in one place: RAS vs LPS, IJK-to-physical matrices, KJI array order.

Conventions (used everywhere in MedAI):

* MRML (Slicer) is **RAS**; ITK, SimpleITK, DICOM and NIfTI-through-ITK are **LPS**.
  ``RAS = diag(-1, -1, 1) @ LPS``.
* numpy arrays of volumes are indexed ``[k, j, i]`` (KJI, slowest axis first), as
  ``slicer.util.arrayFromVolume`` and ``sitk.GetArrayFromImage`` return them.
* ``Geometry`` holds spacing (mm, along i, j, k), origin (physical position of voxel
  centre (0, 0, 0)) and direction (3x3, columns are the unit i, j, k axes), all in one
  coordinate system named by ``Geometry.space`` ("RAS" or "LPS").

This module has no dependency on Slicer or Qt, so the algorithm packages use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""3x3 matrix that flips LPS coordinates to RAS (it is its own inverse)."""


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Convert an (N, 3) or (3,) array of LPS points (mm) to RAS."""
    pts = np.asarray(points, dtype=float)
    return pts * np.array([-1.0, -1.0, 1.0])


ras_to_lps_points = lps_to_ras_points
"""Convert RAS points to LPS (the same sign flip)."""


def lps_to_ras_matrix4(matrix: np.ndarray) -> np.ndarray:
    """Re-express a 4x4 homogeneous transform acting on LPS points as one acting on RAS."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ np.asarray(matrix, dtype=float) @ flip


ras_to_lps_matrix4 = lps_to_ras_matrix4
"""Re-express a 4x4 RAS transform for LPS points (the same conjugation)."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid geometry: spacing (mm, i/j/k), origin and direction in ``space``.

    ``direction[:, a]`` is the unit vector of array axis a (0=i, 1=j, 2=k).
    ``shape_kji`` is the array shape (k, j, i) when known.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    space: str = "RAS"
    shape_kji: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.space not in ("RAS", "LPS"):
            raise ValueError(f"Geometry space must be 'RAS' or 'LPS', not {self.space!r}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"Voxel spacing must be three positive numbers (mm), got {spacing}")
        direction = np.array(self.direction, dtype=float).reshape(3, 3)
        if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
            raise ValueError("Direction matrix must be orthonormal (|det| = 1)")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", direction)
        if self.shape_kji is not None:
            object.__setattr__(self, "shape_kji", tuple(int(s) for s in self.shape_kji))

    # --- conversions -------------------------------------------------------------------
    def to_space(self, space: str) -> Geometry:
        """Return the same grid expressed in ``space`` ("RAS" or "LPS")."""
        if space == self.space:
            return self
        return Geometry(
            spacing=self.spacing,
            origin=tuple(LPS_TO_RAS @ np.array(self.origin)),
            direction=LPS_TO_RAS @ self.direction,
            space=space,
            shape_kji=self.shape_kji,
        )

    def with_shape(self, shape_kji) -> Geometry:
        """Return a copy with ``shape_kji`` set."""
        return Geometry(self.spacing, self.origin, self.direction, self.space, tuple(shape_kji))

    def ijk_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to physical (mm) in ``self.space``."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def physical_to_ijk(self) -> np.ndarray:
        """4x4 matrix mapping physical points in ``self.space`` to continuous (i, j, k)."""
        return np.linalg.inv(self.ijk_to_physical())

    def index_to_point(self, ijk) -> np.ndarray:
        """Physical position(s) in ``self.space`` of (N, 3) or (3,) continuous (i, j, k) indices."""
        ijk = np.asarray(ijk, dtype=float)
        m = self.ijk_to_physical()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def point_to_index(self, points) -> np.ndarray:
        """Continuous (i, j, k) index of (N, 3) or (3,) physical points in ``self.space``."""
        pts = np.asarray(points, dtype=float)
        m = self.physical_to_ijk()
        return pts @ m[:3, :3].T + m[:3, 3]

    @classmethod
    def from_ijk_to_physical(cls, matrix, space="RAS", shape_kji=None) -> Geometry:
        """Build from a 4x4 IJK-to-physical matrix (spacing = column norms)."""
        m = np.asarray(matrix, dtype=float)
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        return cls(tuple(spacing), tuple(m[:3, 3]), m[:3, :3] / spacing, space, shape_kji)

    # --- SimpleITK ---------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> Geometry:
        """Geometry of a 3D SimpleITK image (which is LPS), returned in LPS."""
        size = image.GetSize()
        return cls(
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            space="LPS",
            shape_kji=(size[2], size[1], size[0]),
        )

    def apply_to_sitk(self, image) -> None:
        """Set spacing, origin and direction of a SimpleITK image from this geometry (as LPS)."""
        lps = self.to_space("LPS")
        image.SetSpacing(lps.spacing)
        image.SetOrigin(lps.origin)
        image.SetDirection(tuple(lps.direction.ravel()))

    def same_grid(self, other: Geometry, tol_mm: float = 1e-4) -> bool:
        """True when both describe the same voxel grid (within ``tol_mm`` over the extent)."""
        if self.shape_kji is not None and other.shape_kji is not None and self.shape_kji != other.shape_kji:
            return False
        a, b = self.to_space("RAS"), other.to_space("RAS")
        shape = self.shape_kji or (1, 1, 1)
        corners = np.array([[i, j, k] for i in (0, shape[2]) for j in (0, shape[1]) for k in (0, shape[0])])
        return bool(np.max(np.abs(a.index_to_point(corners) - b.index_to_point(corners))) <= tol_mm)


def rotation_matrix(axis: str, degrees: float) -> np.ndarray:
    """3x3 right-handed rotation about 'x', 'y' or 'z' by ``degrees``."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(f"axis must be 'x', 'y' or 'z', not {axis!r}")
