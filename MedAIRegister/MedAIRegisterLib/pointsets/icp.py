"""Iterative closest point registration of two point clouds / surfaces (mm, one physical space).

Point-to-point (closed-form Umeyama / least-squares affine step) and point-to-plane (linearised
Gauss-Newton step on the fixed surface's normals), for rigid, similarity or affine transforms;
trimmed (only the ``trim_fraction`` closest pairs drive each step, for partial overlap and
outliers); closest points from a scipy ``cKDTree`` built once on the fixed points; multi-start
initialisation from the centroids, the principal axes and their flips (optionally all 24 axis
permutations) for large rotations, the start with the lowest trimmed RMS being refined.

The result maps **moving points onto fixed points** (in whatever space both clouds are given; in
MedAI's Logic, RAS, so the matrix is the to-parent matrix of the aligning transform node).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


from MedAICommonLib import notices

from MedAIRegisterLib.pointsets.icp_starts import MULTI_STARTS, initial_transforms

TRANSFORMS = ("rigid", "similarity", "affine")
METRICS = ("point-to-point", "point-to-plane")
AUTO_TRIM = 0.4
"""Share of closest pairs used while searching with ``trim_fraction="auto"``: scans of one object from
directions 90 degrees apart overlap by about half."""


@dataclass
class IcpResult:
    """``matrix``: 4x4 moving -> fixed; ``rms_mm``: RMS distance of the trimmed (inlier) pairs;
    ``rms_all_mm``: over all moving samples; ``inlier_fraction``: moving samples closer than
    ``inlier_distance_mm`` to the fixed surface; ``iterations`` of the final refinement;
    ``start``: the winning initialisation; ``starts``: trimmed RMS of every start tried; ``trim_fraction``:
    the share of pairs the final fit used; ``reliable``: converged, with the trimmed pairs on the fixed surface
    and no other pose (``rival_angle_deg`` away, ``rival_inlier_fraction``) fitting about as well."""

    matrix: np.ndarray
    rms_mm: float
    rms_all_mm: float
    inlier_fraction: float
    inlier_distance_mm: float
    iterations: int
    converged: bool
    start: str
    starts: dict = field(default_factory=dict)
    trim_fraction: float = 1.0
    reliable: bool = True
    rival_inlier_fraction: float = 0.0
    rival_angle_deg: float = 0.0


def build_tree(points: np.ndarray) -> cKDTree:
    """KD-tree for closest-point queries. Sliding-midpoint splits (``balanced_tree=False``): median
    splits degrade badly on scanner grids with many repeated coordinates (6x slower on the bunny)."""
    return cKDTree(points, balanced_tree=False, compact_nodes=False)


def estimate_normals(points: np.ndarray, neighbours: int = 12, tree: cKDTree | None = None) -> np.ndarray:
    """Unit normals of a sampled surface by PCA of each point's ``neighbours`` nearest points."""
    tree = tree or build_tree(points)
    _, index = tree.query(points, k=min(neighbours, len(points)))
    local = points[index] - points[index].mean(axis=1, keepdims=True)
    covariance = np.einsum("nki,nkj->nij", local, local)
    _, vectors = np.linalg.eigh(covariance)
    return vectors[:, :, 0]


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation matrices (S, 3, 3) from rotation vectors (S, 3)."""
    angle = np.linalg.norm(w, axis=1)
    k = w / np.maximum(angle, 1e-15)[:, None]
    kx = np.zeros((len(w), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx = kx - kx.transpose(0, 2, 1)
    sin, cos = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
    return np.eye(3) + sin * kx + (1 - cos) * kx @ kx


def _point_step(p: np.ndarray, q: np.ndarray, transform: str) -> np.ndarray:
    """Closed-form point-to-point steps (S, 4, 4) taking p (S, k, 3) onto q (Umeyama / least squares)."""
    mu_p, mu_q = p.mean(axis=1), q.mean(axis=1)
    pc, qc = p - mu_p[:, None], q - mu_q[:, None]
    if transform == "affine":
        gram = np.einsum("ski,skj->sij", pc, pc) + 1e-9 * np.eye(3)
        linear = np.linalg.solve(gram, np.einsum("ski,skj->sij", pc, qc)).transpose(0, 2, 1)
    else:
        u, sigma, vt = np.linalg.svd(np.einsum("ski,skj->sij", qc, pc) / p.shape[1])
        d = np.ones((len(p), 3))
        d[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
        linear = u @ (d[:, :, None] * vt)
        if transform == "similarity":
            variance = np.mean(np.sum(pc**2, axis=2), axis=1)
            linear = linear * (np.sum(sigma * d, axis=1) / variance)[:, None, None]
    step = np.tile(np.eye(4), (len(p), 1, 1))
    step[:, :3, :3] = linear
    step[:, :3, 3] = mu_q - np.einsum("sij,sj->si", linear, mu_p)
    return step


def _plane_step(p: np.ndarray, q: np.ndarray, n: np.ndarray, transform: str) -> np.ndarray:
    """Linearised point-to-plane steps (S, 4, 4) moving p (S, k, 3) towards the planes (q, n)."""
    c = p.mean(axis=1)
    pc = p - c[:, None]
    b = np.einsum("ski,ski->sk", n, q - p)
    if transform == "affine":
        a = np.concatenate([(n[..., :, None] * pc[..., None, :]).reshape(*p.shape[:2], 9), n], axis=2)
    else:
        columns = [np.cross(pc, n)]
        if transform == "similarity":
            columns.append(np.einsum("ski,ski->sk", n, pc)[..., None])
        columns.append(n)
        a = np.concatenate(columns, axis=2)
    ata = np.einsum("ski,skj->sij", a, a) + 1e-9 * np.eye(a.shape[2])
    x = np.linalg.solve(ata, np.einsum("ski,sk->si", a, b)[..., None])[..., 0]
    if transform == "affine":
        linear = np.eye(3) + x[:, :9].reshape(-1, 3, 3)
    else:
        linear = _rodrigues(x[:, :3])
        if transform == "similarity":
            linear = linear * (1.0 + x[:, 3])[:, None, None]
    step = np.tile(np.eye(4), (len(p), 1, 1))
    step[:, :3, :3] = linear
    step[:, :3, 3] = c + x[:, -3:] - np.einsum("sij,sj->si", linear, c)
    return step


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _iterate(tree, fixed, normals, moving, starts, metric, transform, trim_fraction, iterations,
             tolerance_mm, anneal=0, progress=None, eps=0.0):
    """Run ICP from every start at once (starts: (S, 4, 4)); returns matrices, trimmed RMS (S,), the
    iterations run and whether each start converged (S,). A start stops moving once it has converged.

    With ``anneal`` > 0 the trimmed share falls linearly from 1 to ``trim_fraction`` over that many
    iterations, so distant starts first settle on the whole shape before outliers are dropped.
    ``eps`` > 0 allows approximate closest points (within a factor 1 + eps), for ranking starts.
    """
    matrices = np.array(starts, dtype=float).reshape(-1, 4, 4)
    n = len(moving)
    centre = moving.mean(axis=0)
    radius = float(np.max(np.linalg.norm(moving - centre, axis=1)))
    rms = np.full(len(matrices), np.inf)
    converged = np.zeros(len(matrices), bool)
    iteration = 0
    for iteration in range(1, iterations + 1):  # noqa: B007 - reported after the loop
        share = trim_fraction if iteration > anneal else 1.0 - (1.0 - trim_fraction) * iteration / max(anneal, 1)
        keep = max(3, int(np.ceil(share * n)))
        active = np.flatnonzero(~converged)
        moved = np.einsum("sij,nj->sni", matrices[active, :3, :3], moving) + matrices[active, None, :3, 3]
        distance, index = tree.query(moved.reshape(-1, 3), eps=eps, workers=-1 if moved.size > 60000 else 1)
        distance, index = distance.reshape(len(active), n), index.reshape(len(active), n)
        order = (np.argpartition(distance, keep - 1, axis=1)[:, :keep] if keep < n
                 else np.tile(np.arange(n), (len(active), 1)))
        previous = rms[active]
        rms[active] = np.sqrt(np.mean(np.take_along_axis(distance, order, 1) ** 2, axis=1))
        p = np.take_along_axis(moved, order[..., None], 1)
        matched = np.take_along_axis(index, order, 1)
        if metric == "point-to-plane":
            step = _plane_step(p, fixed[matched], normals[matched], transform)
        else:
            step = _point_step(p, fixed[matched], transform)
        matrices[active] = step @ matrices[active]
        if progress is not None:
            progress(iteration, float(rms.min()))
        # Largest displacement the step gives any sample (bounded via the samples' radius), mm.
        moved_by = (np.linalg.norm(step[:, :3, :3] - np.eye(3), axis=(1, 2)) * radius
                    + np.linalg.norm(step[:, :3, 3] + np.einsum("sij,j->si", step[:, :3, :3] - np.eye(3), centre),
                                     axis=1))
        if iteration > anneal:
            converged[active] = (np.abs(previous - rms[active]) < tolerance_mm) | (moved_by < 10 * tolerance_mm)
            if converged.all():
                break
    return matrices, rms, iteration, converged


def _starts(fixed, moving, initial, multi_start) -> dict[str, np.ndarray]:
    """The poses ICP starts from: ``initial`` if given, else identity ("none") or ``initial_transforms``."""
    if initial is not None:
        return {"given": np.asarray(initial, dtype=float)}
    if multi_start == "none":
        return {"identity": np.eye(4)}
    return initial_transforms(fixed, moving, multi_start)


def _inlier_fractions(tree, moving, matrices, distance_mm, eps=0.0) -> np.ndarray:
    """Share of ``moving`` samples within ``distance_mm`` of the fixed surface, for each (S, 4, 4) matrix."""
    moved = np.einsum("sij,nj->sni", matrices[:, :3, :3], moving) + matrices[:, None, :3, 3]
    distance, _ = tree.query(moved.reshape(-1, 3), eps=eps, workers=-1 if moved.size > 60000 else 1)
    return np.mean(distance.reshape(len(matrices), -1) <= distance_mm, axis=1)


def _best(fractions: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """Indices ordered best first: most samples on the fixed surface, then lowest trimmed RMS."""
    return np.lexsort((rms, -np.round(fractions, 3)))


def _check(trim, trim_fraction, metric, transform, multi_start, fixed, moving):
    if metric not in METRICS:
        raise ValueError(f"Unknown ICP metric {metric!r}; use {' or '.join(METRICS)}.")
    if transform not in TRANSFORMS:
        raise ValueError(f"Unknown ICP transform {transform!r}; use one of {', '.join(TRANSFORMS)}.")
    for name, cloud in (("fixed", fixed), ("moving", moving)):
        if cloud.ndim != 2 or cloud.shape[1] != 3 or len(cloud) < 4 or not np.all(np.isfinite(cloud)):
            raise ValueError(f"The {name} surface needs at least 4 finite 3D points, got shape {cloud.shape}.")
    if not 0.05 <= trim <= 1.0:
        raise ValueError(f"trim_fraction must be 'auto' or in [0.05, 1], got {trim_fraction}.")
    if multi_start not in MULTI_STARTS:
        raise ValueError(f"Unknown multi-start mode {multi_start!r}; use one of {', '.join(MULTI_STARTS)}.")


def _fixed_surface(fixed: np.ndarray, metric: str, fixed_normals, inlier_distance_mm, rng):
    """(k-d tree, normals or None, inlier distance in mm) of the fixed points; the default inlier distance
    is 3 x the median spacing of up to 2000 points drawn with ``rng``."""
    tree = build_tree(fixed)
    normals = None
    if metric == "point-to-plane":
        normals = estimate_normals(fixed, tree=tree) if fixed_normals is None else np.asarray(fixed_normals, float)
    if inlier_distance_mm is None:
        spacing, _ = tree.query(fixed[rng.choice(len(fixed), min(len(fixed), 2000), replace=False)], k=2)
        inlier_distance_mm = 3.0 * float(np.median(spacing[:, 1]))
    return tree, normals, inlier_distance_mm


def _rank_starts(run, tree, coarse, names, stack, trim, start_iterations, inlier_distance_mm, progress):
    """Every start at once on the small sample ``coarse``, trimming annealed; (names, poses, trimmed RMS
    per start name) of the 4 best go on."""
    report = None if progress is None else (lambda i, _r: progress(0.5 * i / start_iterations))
    stack, rms, _, _ = run(coarse, stack, trim, start_iterations, anneal=start_iterations // 2, progress=report,
                           eps=0.5)
    scores = dict(zip(names, rms.tolist()))
    best = _best(_inlier_fractions(tree, coarse, stack, inlier_distance_mm, eps=0.5), rms)[:4]
    return [names[i] for i in best], stack[best], scores


def icp(fixed: np.ndarray, moving: np.ndarray, *, metric: str = "point-to-plane", transform: str = "rigid",
        trim_fraction: float | str | None = "auto", max_iterations: int = 100, tolerance_mm: float = 1e-4,
        multi_start: str = "sphere", initial: np.ndarray | None = None, max_points: int = 5000,
        start_points: int = 300, start_iterations: int = 30, anneal: int = 0, inlier_distance_mm: float | None = None,
        fixed_normals: np.ndarray | None = None, seed: int = 0, progress=None) -> IcpResult:
    """Register ``moving`` (N, 3) points onto ``fixed`` (M, 3) points (mm, same space).

    ``metric``: "point-to-plane" (normals from ``fixed_normals`` or PCA) or "point-to-point";
    ``transform``: "rigid", "similarity" or "affine"; ``trim_fraction``: share of closest pairs used
    per step (1.0 = classic ICP), or "auto"/None: 0.4 while searching, then the measured overlap (the
    inlier fraction) for the final refinement; ``multi_start``: "none", "centroid", "axes", "all" or
    "sphere" (ignored when ``initial``, a 4x4 moving -> fixed matrix, is given); the moving cloud is randomly
    subsampled to ``max_points`` (``start_points`` while ranking the starts, with trimming annealed over the
    first half of ``start_iterations``; ``anneal`` does the same for a single start). Starts are ranked by the
    share of samples that end within ``inlier_distance_mm`` (default 3 x the fixed points' median spacing) of
    the fixed surface, then by trimmed RMS.
    Stops when the trimmed RMS changes by less than ``tolerance_mm`` or a step moves no sample by more
    than 10 x ``tolerance_mm``. ``progress(fraction)`` is called as it goes. A result whose trimmed pairs
    are not on the fixed surface, or that another pose fits as well, gets ``reliable`` False and a warning.
    """
    fixed = np.asarray(fixed, dtype=float)
    moving = np.asarray(moving, dtype=float)
    auto = trim_fraction is None or trim_fraction == "auto"
    trim = AUTO_TRIM if auto else float(trim_fraction)
    _check(trim, trim_fraction, metric, transform, multi_start, fixed, moving)
    rng = np.random.default_rng(seed)
    tree, normals, inlier_distance_mm = _fixed_surface(fixed, metric, fixed_normals, inlier_distance_mm, rng)

    def sample(count):
        return moving if len(moving) <= count else moving[rng.choice(len(moving), count, replace=False)]

    def run(points, stack, trim, iterations, **options):
        return _iterate(tree, fixed, normals, points, stack, metric, transform, trim, iterations, tolerance_mm,
                        **options)

    starts = _starts(fixed, moving, initial, multi_start)
    names, stack, scores = list(starts), np.array(list(starts.values())), {}
    if len(names) > 1:
        names, stack, scores = _rank_starts(run, tree, sample(start_points), names, stack, trim, start_iterations,
                                            inlier_distance_mm, progress)
    fine = sample(max_points)
    report = None if progress is None else (lambda i, _r: progress(0.5 + 0.4 * i / max_iterations))
    stack, rms, iterations, converged = run(fine, stack, trim, max_iterations, anneal=0 if scores else anneal,
                                            progress=report)
    fractions = _inlier_fractions(tree, fine, stack, inlier_distance_mm)
    order = _best(fractions, rms)
    winner = int(order[0])
    matrix, converged = stack[winner], bool(converged[winner])
    rival = _rival(stack, fractions, rms, order)
    if auto and fractions[winner] > trim + 0.05:
        # Refine with the measured overlap: every pair that lies on the fixed surface drives the fit.
        trim = float(min(1.0, fractions[winner]))
        refined, _, more, refined_converged = run(fine, matrix[None], trim, max_iterations)
        matrix, iterations, converged = refined[0], iterations + more, bool(refined_converged[0])
    if progress is not None:
        progress(1.0)
    distance, _ = tree.query(_apply(matrix, fine), workers=-1)
    return _result(matrix, distance, trim, inlier_distance_mm, iterations, converged, names[winner], scores, rival)


def _result(matrix, distance, trim, inlier_distance_mm, iterations, converged, start, scores, rival) -> IcpResult:
    """The IcpResult of the final pose, from the moving samples' distances (mm) to the fixed surface, judged."""
    inliers = float(np.mean(distance <= inlier_distance_mm))
    trimmed = np.sort(distance)[:max(3, int(np.ceil(trim * len(distance))))]
    return IcpResult(matrix=matrix, rms_mm=float(np.sqrt(np.mean(trimmed**2))),
                     rms_all_mm=float(np.sqrt(np.mean(distance**2))), inlier_fraction=inliers,
                     inlier_distance_mm=float(inlier_distance_mm), iterations=iterations, converged=converged,
                     start=start, starts=scores, trim_fraction=trim,
                     reliable=_judge(converged, inliers, trim, rival, inlier_distance_mm),
                     rival_inlier_fraction=rival[0], rival_angle_deg=rival[1])


def _rival(stack: np.ndarray, fractions: np.ndarray, rms: np.ndarray, order: np.ndarray) -> tuple[float, float]:
    """(inlier fraction, angle from the winner in degrees) of the best other pose (> 5 degrees away) that fits
    about as well as the winner (within 0.02 of its inlier fraction and 1.25 x its trimmed RMS + 0.1 mm);
    (0, 0) when there is none."""
    winner = order[0]
    for i in order[1:]:
        angle = rotation_angle_deg(stack[i] @ np.linalg.inv(stack[winner]))
        if angle > 5.0 and fractions[i] >= fractions[winner] - 0.02 and rms[i] <= 1.25 * rms[winner] + 0.1:
            return float(fractions[i]), angle
    return 0.0, 0.0


def _judge(converged: bool, inliers: float, trim: float, rival: tuple, inlier_distance_mm: float) -> bool:
    """Whether an ICP result can be trusted; warns (MedAIWarning) why not."""
    if not converged:
        notices.warn("ICP did not converge within its iterations; the pose may be off: check the overlay, give an "
                     "initial transform or raise the iterations.")
    on_surface = inliers >= 0.8 * trim
    if not on_surface:
        notices.warn(f"ICP result unreliable: only {inliers:.0%} of the moving samples end within "
                     f"{inlier_distance_mm:.2g} mm of the fixed surface, fewer than the {trim:.0%} of pairs that drove "
                     "the fit: the surfaces overlap less than assumed or the pose is wrong; lower --trim, try "
                     "--multi-start sphere or give an initial transform.")
    if rival[1] > 0:
        notices.warn(f"ICP result ambiguous: another pose {rival[1]:.0f} degrees away fits as well ({rival[0]:.0%} of "
                     f"the samples on the fixed surface, the result {inliers:.0%}); check the overlay or give an "
                     "initial transform.")
    return bool(converged and on_surface and rival[1] == 0)


UNITS = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def surface_units(fixed: np.ndarray, moving: np.ndarray, units: str = "auto") -> tuple[str, float]:
    """(unit, mm per unit) of two point clouds: ``units`` if given ("mm", "cm", "m"), else "m" when both span
    less than 2 units (no anatomy is 2 mm across; scanner clouds such as the Stanford bunny are in metres),
    with a warning, else "mm"."""
    if units != "auto":
        if units not in UNITS:
            raise ValueError(f"Unknown surface units {units!r}; use auto, {', '.join(UNITS)}.")
        return units, UNITS[units]
    span = max(float(np.linalg.norm(np.ptp(np.asarray(c, float), axis=0))) for c in (fixed, moving))
    if span < 2.0:
        notices.warn(f"The surfaces span only {span:.3g} units: read as metres (x1000 to mm); give --units mm "
                     "if they really are millimetres.")
        return "m", UNITS["m"]
    return "mm", 1.0


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Rotation angle (degrees) of the rotational part of a 4x4 or 3x3 matrix (scale removed)."""
    r = np.asarray(matrix, dtype=float)[:3, :3]
    u, _, vt = np.linalg.svd(r)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))
