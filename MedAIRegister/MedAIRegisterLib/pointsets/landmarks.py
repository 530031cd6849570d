"""Paired-landmark registration: rigid, similarity, affine (least squares) and thin-plate spline.

All functions take two (N, 3) arrays of corresponding points in one physical space (mm; RAS or
LPS, as long as both are in the same one) and return a transform mapping ``source`` points onto
``target`` points. In MedAI's Logic ``source`` is the moving landmarks and ``target`` the fixed
ones in RAS, so the 4x4 result is directly the to-parent matrix of the transform node that aligns
the moving node with the fixed one.

Thin-plate spline: VTK's ``vtkThinPlateSplineTransform`` (basis R, the 3D biharmonic kernel) is
used rather than scipy's RBF interpolator because Slicer's transform nodes hold it natively, Slicer
writes it to ``.h5``/``.tfm`` as ITK's ``ThinPlateSplineKernelTransform`` and inverts it on the fly,
so the saved file is exactly what Slicer's own Fiducial Registration Wizard would write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("rigid", "similarity", "affine", "tps")


@dataclass
class LandmarkResult:
    """Result of a landmark fit.

    ``matrix``: 4x4 homogeneous matrix mapping source -> target (None for ``tps``);
    ``residuals_mm``: per-point fiducial registration error |T(source_i) - target_i| (mm);
    ``predicted_tre_mm``: Fitzpatrick's predicted TRE at each landmark (rigid/similarity only; else None);
    ``tps``: the ``vtkThinPlateSplineTransform`` (source -> target) for ``tps``.
    """

    method: str
    matrix: np.ndarray | None
    residuals_mm: np.ndarray
    predicted_tre_mm: np.ndarray | None = None
    tps: object = None
    scale: float = 1.0
    extras: dict = field(default_factory=dict)

    @property
    def fre_mean_mm(self) -> float:
        """Mean fiducial registration error (mm)."""
        return float(np.mean(self.residuals_mm))

    @property
    def fre_rms_mm(self) -> float:
        """Root-mean-square fiducial registration error (mm)."""
        return float(np.sqrt(np.mean(self.residuals_mm**2)))

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) source-space points into the target space."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        if self.tps is not None:
            return np.array([self.tps.TransformPoint(p.tolist()) for p in points])
        return points @ self.matrix[:3, :3].T + self.matrix[:3, 3]


def _check_pairs(source: np.ndarray, target: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    source = np.atleast_2d(np.asarray(source, dtype=float))
    target = np.atleast_2d(np.asarray(target, dtype=float))
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(
            f"Landmarks must be two (N, 3) arrays of paired points, got {source.shape} and "
            f"{target.shape}; place the same number of points in both lists, in the same order."
        )
    if len(source) < minimum:
        raise ValueError(f"This fit needs at least {minimum} landmark pairs, got {len(source)}; add more points.")
    if not (np.all(np.isfinite(source)) and np.all(np.isfinite(target))):
        raise ValueError("Landmark coordinates must be finite numbers.")
    return source, target


def rigid_fit(source: np.ndarray, target: np.ndarray, scale: bool = False) -> np.ndarray:
    """Least-squares rigid (or, with ``scale``, similarity) 4x4 matrix mapping source -> target.

    Umeyama's closed form: SVD of the cross-covariance of the centred points, with the reflection
    correction so the result is a proper rotation (det = +1).
    """
    source, target = _check_pairs(source, target, 3)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    xs, xt = source - mu_s, target - mu_t
    covariance = xt.T @ xs / len(source)
    u, sigma, vt = np.linalg.svd(covariance)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rotation = u @ np.diag(d) @ vt
    factor = 1.0
    if scale:
        variance = np.mean(np.sum(xs**2, axis=1))
        if variance <= 0:
            raise ValueError("Source landmarks all coincide; a similarity fit is undefined.")
        factor = float(np.sum(sigma * d) / variance)
    matrix = np.eye(4)
    matrix[:3, :3] = factor * rotation
    matrix[:3, 3] = mu_t - factor * rotation @ mu_s
    return matrix


def affine_fit(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares 12-parameter affine 4x4 matrix mapping source -> target (needs 4 non-coplanar pairs)."""
    source, target = _check_pairs(source, target, 4)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    xs, xt = source - mu_s, target - mu_t
    gram = xs.T @ xs
    if np.linalg.matrix_rank(gram, tol=1e-9 * max(1.0, np.trace(gram))) < 3:
        raise ValueError("Affine fit needs landmarks that are not all on one plane or line; add out-of-plane points.")
    linear = np.linalg.solve(gram, xs.T @ xt).T
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = mu_t - linear @ mu_s
    return matrix


def thin_plate_spline(source: np.ndarray, target: np.ndarray):
    """A ``vtkThinPlateSplineTransform`` (basis R) mapping source -> target exactly at the landmarks."""
    import vtk

    source, target = _check_pairs(source, target, 4)
    tps = vtk.vtkThinPlateSplineTransform()
    tps.SetBasisToR()
    tps.SetSourceLandmarks(_vtk_points(source))
    tps.SetTargetLandmarks(_vtk_points(target))
    tps.Update()
    return tps


def _vtk_points(points: np.ndarray):
    import vtk

    out = vtk.vtkPoints()
    for p in points:
        out.InsertNextPoint(float(p[0]), float(p[1]), float(p[2]))
    return out


def predicted_tre(fiducials: np.ndarray, targets: np.ndarray, fle_rms_mm: float) -> np.ndarray:
    """Fitzpatrick, West & Maurer (1998) expected TRE (mm) of rigid point registration at ``targets``.

    TRE^2(r) = FLE^2 / N * (1 + 1/3 * sum_k d_k^2 / f_k^2), with d_k the distance of r from the
    k-th principal axis of the fiducial configuration and f_k the RMS distance of the fiducials
    from that axis. ``fle_rms_mm`` is the RMS fiducial localisation error.
    """
    fiducials = np.atleast_2d(np.asarray(fiducials, dtype=float))
    targets = np.atleast_2d(np.asarray(targets, dtype=float))
    n = len(fiducials)
    centroid = fiducials.mean(axis=0)
    _, _, axes = np.linalg.svd(fiducials - centroid, full_matrices=False)
    centred_f = (fiducials - centroid) @ axes.T  # coordinates along principal axes
    centred_t = (targets - centroid) @ axes.T
    ratio = np.zeros(len(targets))
    for k in range(3):
        others = [a for a in range(3) if a != k]
        f2 = np.mean(np.sum(centred_f[:, others] ** 2, axis=1))
        d2 = np.sum(centred_t[:, others] ** 2, axis=1)
        ratio += d2 / f2 if f2 > 0 else np.inf
    return np.sqrt(fle_rms_mm**2 / n * (1.0 + ratio / 3.0))


def estimate_fle(fre_rms_mm: float, count: int) -> float:
    """RMS fiducial localisation error estimated from the RMS FRE: FLE^2 = FRE^2 * N / (N - 2)."""
    if count <= 2:
        return float("nan")
    return float(fre_rms_mm * np.sqrt(count / (count - 2.0)))


def fit_landmarks(source: np.ndarray, target: np.ndarray, method: str = "rigid") -> LandmarkResult:
    """Fit ``method`` ("rigid", "similarity", "affine" or "tps") mapping source -> target points (mm).

    Returns residuals per point (FRE) and, for rigid/similarity, the predicted TRE at each landmark
    using the FLE estimated from the FRE.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown landmark method {method!r}; use one of {', '.join(METHODS)}.")
    source, target = _check_pairs(source, target, 4 if method in ("affine", "tps") else 3)
    if method == "tps":
        tps = thin_plate_spline(source, target)
        result = LandmarkResult(method, None, np.zeros(len(source)), tps=tps)
        result.residuals_mm = np.linalg.norm(result.transform_points(source) - target, axis=1)
        return result
    matrix = affine_fit(source, target) if method == "affine" else rigid_fit(source, target, method == "similarity")
    mapped = source @ matrix[:3, :3].T + matrix[:3, 3]
    residuals = np.linalg.norm(mapped - target, axis=1)
    result = LandmarkResult(method, matrix, residuals, scale=float(np.cbrt(np.linalg.det(matrix[:3, :3]))))
    if method in ("rigid", "similarity"):
        fle = estimate_fle(result.fre_rms_mm, len(source))
        result.predicted_tre_mm = predicted_tre(source, source, fle)
        result.extras["fle_estimate_mm"] = fle
    return result


def read_elastix_points(path) -> np.ndarray:
    """Read an elastix ``point``/``index`` file (first line the kind, second the count) as (N, 3)."""
    with open(path) as handle:
        lines = [line.strip() for line in handle if line.strip()]
    if not lines or lines[0].lower() not in ("point", "index"):
        raise ValueError(f"{path} is not an elastix point file (first line must be 'point' or 'index').")
    count = int(lines[1])
    points = np.array([[float(v) for v in line.split()] for line in lines[2 : 2 + count]])
    if points.shape != (count, 3):
        raise ValueError(f"{path} announces {count} points but holds {points.shape}.")
    return points
