"""Test/demo data for registration: a copy of an image moved by a known rigid transform and given a
non-monotonic intensity remapping (to mimic another modality). SimpleITK images, LPS mm."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def rigid_transform(rotation_deg, translation_mm, centre_lps) -> sitk.Euler3DTransform:
    """Euler 3D transform (angles in degrees about x, y, z; translation in mm) about ``centre_lps``."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre_lps))
    transform.SetRotation(*(float(np.deg2rad(a)) for a in rotation_deg))
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    return transform


def remap_intensities(values: np.ndarray, knots_in, knots_out) -> np.ndarray:
    """Piecewise-linear intensity remapping through (knots_in -> knots_out); may be non-monotonic."""
    return np.interp(values, knots_in, knots_out).astype(np.float32)


def default_remap_knots(image: sitk.Image) -> tuple[list, list]:
    """A non-monotonic remapping over the image's 1-99th intensity percentiles: the darkest tissue becomes
    mid-grey, mid intensities become bright, the brightest become dark (a CT -> 'MR-like' look)."""
    array = sitk.GetArrayViewFromImage(image)
    lo, hi = np.percentile(array, [1, 99])
    span = hi - lo
    knots_in = [lo - span, lo, lo + 0.3 * span, lo + 0.55 * span, lo + 0.8 * span, hi, hi + span]
    knots_out = [300.0, 300.0, 100.0, 900.0, 600.0, 200.0, 200.0]
    return knots_in, knots_out


def moved_copy(
    image: sitk.Image,
    rotation_deg=(10.0, -5.0, 15.0),
    translation_mm=(15.0, -20.0, 10.0),
    remap: bool = True,
    pad_mm: float = 30.0,
) -> tuple[sitk.Image, sitk.Transform]:
    """A 'moving' image: ``image``'s anatomy displaced by a rigid transform (about the image centre), on a
    grid enlarged by ``pad_mm`` per side, intensities optionally remapped non-monotonically.

    Returns ``(moving, truth)`` where ``truth`` is the fixed -> moving LPS transform that a registration
    of ``moving`` onto ``image`` must recover (ITK convention).
    """
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    resampling = rigid_transform(rotation_deg, translation_mm, centre)  # moving grid point -> fixed point
    pad = [int(np.ceil(pad_mm / s)) for s in image.GetSpacing()]
    size = [s + 2 * p for s, p in zip(image.GetSize(), pad)]
    origin = image.TransformContinuousIndexToPhysicalPoint([-p for p in pad])
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(origin)
    floor = float(np.percentile(sitk.GetArrayViewFromImage(image), 1))
    moving = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, resampling, sitk.sitkLinear, floor)
    if remap:
        knots_in, knots_out = default_remap_knots(image)
        remapped = sitk.GetImageFromArray(remap_intensities(sitk.GetArrayFromImage(moving), knots_in, knots_out))
        remapped.CopyInformation(moving)
        moving = remapped
    return moving, resampling.GetInverse()


def grid_points(image: sitk.Image, step: int = 4, mask: sitk.Image | None = None) -> np.ndarray:
    """(N, 3) LPS positions of every ``step``-th voxel (inside ``mask`` when given), for TRE."""
    size = image.GetSize()
    ijk = np.stack(np.meshgrid(*[np.arange(0, s, step) for s in size], indexing="ij"), -1).reshape(-1, 3)
    if mask is not None:
        values = sitk.GetArrayViewFromImage(mask)
        ijk = ijk[values[ijk[:, 2], ijk[:, 1], ijk[:, 0]] > 0]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (ijk * np.array(image.GetSpacing())) @ direction.T


class SmoothDeformation:
    """A known smooth displacement ``v`` (LPS mm) about ``centre``: component c is
    ``amplitude * sin(2 pi x_(c+1) / wavelength + phase_c) * cos(2 pi x_(c+2) / wavelength + phase_c')``,
    with ``x`` relative to ``centre``. ``warp(x) = x + v(x)``; :meth:`inverse` inverts it by fixed-point
    iteration (converges while ``2 pi amplitude / wavelength < 1``)."""

    def __init__(self, centre_lps, amplitude_mm: float = 5.0, wavelength_mm: float = 100.0, seed: int = 0):
        self.centre = np.asarray(centre_lps, float)
        self.amplitude, self.wavelength = float(amplitude_mm), float(wavelength_mm)
        self.phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, (3, 2))

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) displacement (mm) at (N, 3) LPS points."""
        x = 2 * np.pi * (np.atleast_2d(points) - self.centre) / self.wavelength
        return np.stack(
            [
                self.amplitude
                * np.sin(x[:, (c + 1) % 3] + self.phases[c, 0])
                * np.cos(x[:, (c + 2) % 3] + self.phases[c, 1])
                for c in range(3)
            ],
            1,
        )

    def warp(self, points: np.ndarray) -> np.ndarray:
        """x + v(x)."""
        return np.atleast_2d(points) + self.displacement(points)

    def inverse(self, points: np.ndarray, iterations: int = 40) -> np.ndarray:
        """y with y + v(y) = points."""
        points = np.atleast_2d(np.asarray(points, float))
        y = points.copy()
        for _ in range(iterations):
            y = points - self.displacement(y)
        return y


def deformed_copy(
    image: sitk.Image,
    deformation: SmoothDeformation,
    rotation_deg=(4.0, -3.0, 6.0),
    translation_mm=(6.0, -8.0, 5.0),
    pad_mm: float = 15.0,
):
    """A 'moving' image: ``image`` deformed by ``deformation`` (in fixed space) and moved rigidly, on a grid
    enlarged by ``pad_mm`` per side: ``moving(y) = image(warp(R(y)))`` with R the rigid moving -> fixed map.

    Returns ``(moving, truth)``; ``truth(points)`` gives the exact fixed -> moving LPS map of (N, 3) points
    (what a deformable registration must recover): ``R^-1(warp^-1(p))``.
    """
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    rigid = rigid_transform(rotation_deg, translation_mm, centre)  # moving -> fixed
    pad = [int(np.ceil(pad_mm / s)) for s in image.GetSpacing()]
    size = [s + 2 * p for s, p in zip(image.GetSize(), pad)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-p for p in pad]))
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(reference.GetOrigin()) + (ijk * np.array(image.GetSpacing())) @ direction.T
    matrix = np.array(rigid.GetMatrix()).reshape(3, 3)
    offset = np.array(rigid.TransformPoint((0.0, 0.0, 0.0)))
    source = deformation.warp(points @ matrix.T + offset)
    index = (source - np.array(image.GetOrigin())) @ direction / np.array(image.GetSpacing())
    from scipy import ndimage

    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    floor = float(np.percentile(array, 1))
    values = ndimage.map_coordinates(array, index[:, ::-1].T, order=1, mode="constant", cval=floor)
    moving = sitk.GetImageFromArray(values.reshape(size).transpose(2, 1, 0).astype(np.float32))
    moving.CopyInformation(reference)
    inverse_rigid = np.linalg.inv(np.vstack([np.column_stack([matrix, offset]), [0, 0, 0, 1]]))

    def truth(fixed_points: np.ndarray) -> np.ndarray:
        return deformation.inverse(fixed_points) @ inverse_rigid[:3, :3].T + inverse_rigid[:3, 3]

    return moving, truth
