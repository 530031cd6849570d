"""Generated training cases: one ellipsoid "lesion" in noisy tissue, varied by a seed.

Each case is a pair of SimpleITK images (LPS, as files would give them): a float32 intensity
volume and a uint8 label map (1 = ellipsoid). What varies with the seed: ellipsoid centre,
radii (``radius_mm`` range) and rotation, lesion contrast (``contrast`` range, in units of the
noise-free tissue level 100; negative = darker than tissue), noise standard deviation
(``noise`` range), a smooth tissue bias and the grid origin. The same seed gives the same case.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def make_phantom_case(
    seed: int,
    shape=(32, 32, 32),
    spacing_mm: float = 2.0,
    contrast=(60.0, 120.0),
    noise=(10.0, 25.0),
    radius_mm=(6.0, 14.0),
) -> tuple[sitk.Image, sitk.Image]:
    """Image and label (SimpleITK, LPS) of phantom ``seed`` on a ``shape`` (i, j, k) grid.

    ``contrast``, ``noise`` and ``radius_mm`` are (low, high) ranges sampled uniformly; the
    ellipsoid lies fully inside the grid.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(s) for s in shape)
    extent = np.array([nx, ny, nz], dtype=float) * spacing_mm
    radii = rng.uniform(radius_mm[0], radius_mm[1], size=3)
    margin = radii.max() + spacing_mm
    centre = np.array([rng.uniform(margin, max(margin, e - margin)) for e in extent])
    angle = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * spacing_mm for n in (nz, ny, nx)], indexing="ij")
    points = np.stack([x, y, z], axis=-1) - centre
    local = points @ rot
    inside = np.sum((local / radii) ** 2, axis=-1) <= 1.0
    tissue = 100.0 + 15.0 * np.sin(x / extent[0] * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.28))
    image = tissue + inside * rng.uniform(contrast[0], contrast[1])
    image = image + rng.normal(0.0, rng.uniform(noise[0], noise[1]), size=image.shape)
    origin = tuple(float(v) for v in rng.uniform(-50, 50, size=3))
    result = []
    for array in (image.astype(np.float32), inside.astype(np.uint8)):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((spacing_mm,) * 3)
        itk.SetOrigin(origin)
        result.append(itk)
    return result[0], result[1]


def make_two_lesion_case(
    seed: int, shape=(32, 32, 32), spacing_mm: float = 2.0, noise=(10.0, 20.0)
) -> tuple[sitk.Image, sitk.Image]:
    """Image and label (SimpleITK, LPS) with a bright lesion (label 1) in the lower-x half and a
    dark lesion (label 2) in the upper-x half; radii, contrasts and noise vary with ``seed``."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(s) for s in shape)
    z, y, x = np.meshgrid(*[(np.arange(n) + 0.5) * spacing_mm for n in (nz, ny, nx)], indexing="ij")
    half = nx * spacing_mm / 2
    labels = np.zeros(x.shape, np.uint8)
    image = 100.0 + 10.0 * np.sin(y / (ny * spacing_mm) * np.pi * rng.uniform(0.5, 1.5))
    for value, sign, (low, high) in ((1, 1.0, (0.0, half)), (2, -1.0, (half, 2 * half))):
        radii = rng.uniform(4.0, min(9.0, half / 2 - spacing_mm), size=3)
        centre = [
            rng.uniform(low + radii[0] + spacing_mm, high - radii[0] - spacing_mm),
            rng.uniform(radii[1] + spacing_mm, ny * spacing_mm - radii[1] - spacing_mm),
            rng.uniform(radii[2] + spacing_mm, nz * spacing_mm - radii[2] - spacing_mm),
        ]
        inside = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
            (z - centre[2]) / radii[2]
        ) ** 2 <= 1.0
        labels[inside] = value
        image = image + sign * inside * rng.uniform(60.0, 100.0)
    image = image + rng.normal(0.0, rng.uniform(noise[0], noise[1]), size=image.shape)
    result = []
    for array in (image.astype(np.float32), labels):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((spacing_mm,) * 3)
        result.append(itk)
    return result[0], result[1]


def make_phantom_cases(seeds, **kwargs) -> list[tuple[sitk.Image, sitk.Image]]:
    """:func:`make_phantom_case` for each seed."""
    return [make_phantom_case(int(seed), **kwargs) for seed in seeds]


def write_phantom_cases(folder, seeds, **kwargs) -> tuple[list[str], list[str]]:
    """Write cases as ``case<seed>.nii.gz`` / ``case<seed>_label.nii.gz``; returns (images, labels)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for seed in seeds:
        image, label = make_phantom_case(int(seed), **kwargs)
        images.append(str(folder / f"case{seed}.nii.gz"))
        labels.append(str(folder / f"case{seed}_label.nii.gz"))
        sitk.WriteImage(image, images[-1])
        sitk.WriteImage(label, labels[-1])
    return images, labels
