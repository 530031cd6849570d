"""Dose-influence rows of CT-grid voxels: trilinear interpolation of a coarser dose grid's matrix.

The dose shown and evaluated is the dose-grid dose interpolated trilinearly back onto the CT
(:func:`dose_influence.dose_to_ct_grid`). Optimising target and organ objectives on the dose grid
therefore misses what that interpolation does at their edges (a 5 mm grid blurs a target's rim).
``ct_rows`` builds, for chosen CT voxels, the rows ``W @ dij`` where ``W`` holds the same trilinear
weights, so objectives can be optimised on exactly the dose that will be evaluated. Geometry in LPS.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from MedAICommonLib.geometry import Geometry


def interpolation_matrix(dose_geometry: Geometry, ct_geometry: Geometry, ct_mask: np.ndarray) -> sp.csr_matrix:
    """Sparse (voxels of ``ct_mask``, C order) x (dose-grid voxels, C order) trilinear weights (0 outside)."""
    ct = ct_geometry.to_space("LPS")
    dg = dose_geometry.to_space("LPS")
    kji = np.argwhere(np.asarray(ct_mask, bool))
    pts = ct.index_to_point(kji[:, ::-1].astype(float))
    f = dg.point_to_index(pts)  # continuous (i, j, k) on the dose grid
    n_i, n_j, n_k = dg.shape_kji[2], dg.shape_kji[1], dg.shape_kji[0]
    base = np.floor(f).astype(np.int64)
    frac = f - base
    rows, cols, vals = [], [], []
    r = np.arange(len(kji))
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                i, j, k = base[:, 0] + di, base[:, 1] + dj, base[:, 2] + dk
                w = (
                    np.where(di, frac[:, 0], 1 - frac[:, 0])
                    * np.where(dj, frac[:, 1], 1 - frac[:, 1])
                    * np.where(dk, frac[:, 2], 1 - frac[:, 2])
                )
                ok = (i >= 0) & (j >= 0) & (k >= 0) & (i < n_i) & (j < n_j) & (k < n_k) & (w > 1e-9)
                rows.append(r[ok])
                cols.append((k[ok] * n_j + j[ok]) * n_i + i[ok])
                vals.append(w[ok])
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(kji), int(np.prod(dg.shape_kji))),
    )


def ct_factor(dose_geometry: Geometry, ct_geometry: Geometry, ct_mask: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """(W, rows): CT-voxel doses of ``ct_mask`` = W @ (dose-grid doses of ``rows``); W is trilinear."""
    w = interpolation_matrix(dose_geometry, ct_geometry, ct_mask)
    used = np.unique(w.indices)
    remap = np.full(w.shape[1], -1, np.int64)
    remap[used] = np.arange(len(used))
    return sp.csr_matrix((w.data, remap[w.indices], w.indptr), shape=(w.shape[0], len(used))), used


def ct_rows(dij: sp.spmatrix, dose_geometry: Geometry, ct_geometry: Geometry, ct_mask: np.ndarray) -> sp.csr_matrix:
    """Dose-influence rows (CT voxels of ``ct_mask`` x bixels, float32 CSR) of the interpolated dose."""
    w, used = ct_factor(dose_geometry, ct_geometry, ct_mask)
    return (w @ dij.tocsr()[used]).astype(np.float32).tocsr()


def exclusive_ct_masks(masks: dict[str, np.ndarray], priorities: dict[str, int]) -> dict[str, np.ndarray]:
    """CT-grid masks with voxels shared by several structures kept only by the best (lowest) priority."""
    taken = None
    out = {}
    for name in sorted(masks, key=lambda n: priorities.get(n, 2)):
        m = np.asarray(masks[name], bool)
        out[name] = m if taken is None else m & ~taken
        taken = m.copy() if taken is None else taken | m
    return out
