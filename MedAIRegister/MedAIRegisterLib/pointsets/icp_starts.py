"""Initial poses for ICP: centroids superimposed, principal axes matched (with their flips or all 24
axis permutations), or rotations spread uniformly over the sphere of rotations.

Every pose is a 4x4 matrix mapping **moving points onto fixed points** (the space both clouds are in).
"""

from __future__ import annotations

import itertools

import numpy as np

MULTI_STARTS = ("none", "centroid", "axes", "all", "sphere")


def _principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    axes = vt.T
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    return centroid, axes


def uniform_rotations(count: int) -> np.ndarray:
    """``count`` near-uniformly spread 3x3 rotations (super-Fibonacci spiral, Alexa 2022); deterministic."""
    s = np.arange(count) + 0.5
    r, big_r = np.sqrt(s / count), np.sqrt(1.0 - s / count)
    alpha, beta = 2 * np.pi * s / np.sqrt(2.0), 2 * np.pi * s / 1.533751168755204288118041
    x, y, z, w = r * np.sin(alpha), r * np.cos(alpha), big_r * np.sin(beta), big_r * np.cos(beta)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def initial_transforms(
    fixed: np.ndarray, moving: np.ndarray, mode: str = "axes", rotations: int = 192
) -> dict[str, np.ndarray]:
    """Candidate moving -> fixed starts, all superimposing the centroids: ``"centroid"`` only,
    ``"axes"`` (+ principal axes matched with the 4 proper sign flips), ``"all"`` (+ the 24
    rotations permuting the principal axes) or ``"sphere"`` (+ ``rotations`` uniformly spread ones,
    for partial overlaps where principal axes do not correspond)."""
    cf, af = _principal_axes(fixed)
    cm, am = _principal_axes(moving)
    starts = {}
    centroid = np.eye(4)
    centroid[:3, 3] = cf - cm
    starts["centroid"] = centroid
    if mode == "centroid":
        return starts
    signs = [(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)]
    candidates = {f"axes{s}": af @ np.diag(s) @ am.T for s in signs}
    if mode == "sphere":
        candidates.update({f"sphere{i}": r for i, r in enumerate(uniform_rotations(rotations))})
    elif mode == "all":
        for perm in itertools.permutations(range(3)):
            for s in itertools.product((1, -1), repeat=3):
                p = np.zeros((3, 3))
                p[list(range(3)), list(perm)] = s
                if np.linalg.det(p) > 0:
                    candidates[f"perm{perm}{s}"] = af @ p @ am.T
    elif mode != "axes":
        raise ValueError(f"Unknown multi-start mode {mode!r}; use none, centroid, axes, all or sphere.")
    for name, rotation in candidates.items():
        m = np.eye(4)
        m[:3, :3] = rotation
        m[:3, 3] = cf - rotation @ cm
        starts[name] = m
    return starts
