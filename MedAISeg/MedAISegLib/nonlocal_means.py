"""3D non-local-means denoising in torch (CPU or CUDA), the fast box-filter formulation.

For every offset ``d`` of the search window the squared difference image ``(x - x(. + d))**2`` is
averaged over the patch with a separable box filter (three 1D running means), which gives the
patch distance of every voxel to its ``d``-neighbour at once (Darbon et al. 2008; the same idea as
scikit-image's ``fast_mode``). Weights ``exp(-max(dist - 2 sigma^2, 0) / h^2)`` are accumulated
into a weighted mean. Offsets are processed in chunks stacked along the batch axis, so the work is
vectorised and memory stays bounded (``chunk_voxels``). The symmetry ``dist_d(x) = dist_-d(x + d)``
halves the work: each pair ``{d, -d}`` is computed once and credited to both voxels.

Arrays are KJI; ``spacing`` is not used (patches and search windows are in voxels, as in
scikit-image). Intensities keep their unit (e.g. HU); ``h`` and ``sigma`` are in the same unit.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def estimate_noise_sigma(array: np.ndarray) -> float:
    """Robust Gaussian noise estimate (same unit as ``array``) from the median absolute Laplacian-like
    residual of neighbouring voxels (Immerkaer-style, along the fastest axis)."""
    a = np.asarray(array, dtype=np.float64)
    residual = (a[..., 2:] - 2 * a[..., 1:-1] + a[..., :-2]) / np.sqrt(6.0)
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def _box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a (2r+1)^3 box, 'valid' (output smaller by 2r per axis); x is (N, D, H, W).

    Small radii add shifted slices (2r additions per axis); larger ones use running sums.
    """
    if radius == 0:
        return x
    size = 2 * radius + 1
    for dim in (1, 2, 3):
        n = x.shape[dim] - size + 1
        if radius <= 3:
            out = x.narrow(dim, 0, n).clone()
            for k in range(1, size):
                out += x.narrow(dim, k, n)
        else:
            c = torch.cumsum(x, dim=dim)
            out = c.narrow(dim, size - 1, n).clone()
            out.narrow(dim, 1, n - 1).sub_(c.narrow(dim, 0, n - 1))
        x = out
    return x


def _half_offsets(search_radius: int) -> list[tuple[int, int, int]]:
    """Offsets of the search window with one of each pair {d, -d}, without (0, 0, 0)."""
    r = range(-search_radius, search_radius + 1)
    return [d for d in itertools.product(r, r, r) if d > (0, 0, 0)]


def nonlocal_means(array: np.ndarray, h: float | None = None, patch_radius: int = 1, search_radius: int = 3,
                   sigma: float | None = None, device: str | torch.device = "cpu",
                   chunk_voxels: int = 2**22, progress=None) -> np.ndarray:
    """Denoise a 3D KJI array with non-local means; returns float32 of the same shape.

    ``h``: filter strength (intensity unit); default ``0.8 * sigma``. ``sigma``: noise standard
    deviation (default: estimated). ``patch_radius``/``search_radius`` in voxels (patch side
    2p+1, search side 2s+1; scikit-image's ``patch_size = 2p+1`` and ``patch_distance = s``).
    ``device``: ``"cpu"``, ``"cuda"`` or a ``torch.device`` (same results within float32 rounding).
    ``chunk_voxels`` bounds the size of intermediate tensors (elements; 2**22 floats = 16 MiB, which
    keeps the work cache-friendly on CPUs; raise it on GPUs).
    ``progress``: optional callable ``(fraction)`` called between chunks (may raise to cancel).
    """
    volume = np.asarray(array)
    if volume.ndim != 3:
        raise ValueError(f"Non-local means needs a 3D array (k, j, i), got shape {volume.shape}")
    if patch_radius < 0 or search_radius < 1:
        raise ValueError("patch_radius must be >= 0 and search_radius >= 1 (voxels)")
    sigma = estimate_noise_sigma(volume) if sigma is None else float(sigma)
    h = 0.8 * sigma if h is None else float(h)
    if h <= 0:
        raise ValueError(f"NLM filter strength h must be > 0 (intensity units), got {h}; set h or sigma.")
    device = torch.device(device)
    # Work on zero-mean, unit-scaled data for float32 accuracy; scale h and sigma alike.
    offset, scale = float(volume.mean()), float(volume.std()) or 1.0
    x = torch.as_tensor((volume.astype(np.float32) - offset) / scale, device=device)
    # Distances are box sums (not means): fold the patch size into h^2 and 2 sigma^2.
    patch_voxels = float((2 * patch_radius + 1) ** 3)
    h2 = (h / scale) ** 2 * patch_voxels
    var2 = 2.0 * (sigma / scale) ** 2 * patch_voxels
    s, p = int(search_radius), int(patch_radius)
    pad = s + p
    shape = x.shape
    # Mirror padding (as scikit-image), or edge replication for volumes thinner than the padding.
    mode = "reflect" if min(shape) > pad else "replicate"
    xp = F.pad(x[None, None], (pad,) * 6, mode=mode)[0, 0]  # (D+2pad, ...)
    # Region on which differences are needed: voxels of the output grown by p (patch support),
    # and by s more so that the symmetric credit x + d stays inside.
    grown = [n + 2 * p + 2 * s for n in shape]
    base = xp  # grown region starts at index 0 of xp (pad = s + p)
    weight_sum = torch.zeros(shape, device=device)
    value_sum = torch.zeros(shape, device=device)
    w_max = torch.zeros(shape, device=device)
    offsets = _half_offsets(s)
    per_offset = int(np.prod(grown))
    chunk = max(1, int(chunk_voxels // (3 * per_offset)))
    # Copies of xp shifted by d need xp padded by s more on the far side.
    xpp = F.pad(xp[None, None], (s,) * 6, mode="replicate")[0, 0]
    diff_buffer = torch.empty((chunk, *grown), device=device)
    inner = (slice(s + p, s + p + shape[0]), slice(s + p, s + p + shape[1]), slice(s + p, s + p + shape[2]))
    for start in range(0, len(offsets), chunk):
        group = offsets[start:start + chunk]
        diff = diff_buffer[:len(group)]
        for index, (a, b, c) in enumerate(group):
            torch.sub(xpp[s + a:s + a + grown[0], s + b:s + b + grown[1], s + c:s + c + grown[2]],
                      base[: grown[0], : grown[1], : grown[2]], out=diff[index])
        dist = _box_sum(diff.square_(), p)  # (n, D+2s, H+2s, W+2s): distance at voxel v between v and v + d
        w = dist.sub_(var2).clamp_(min=0.0).mul_(-1.0 / h2).exp_()
        w_fwd = w[:, s:s + shape[0], s:s + shape[1], s:s + shape[2]]
        weight_sum += w_fwd.sum(0)
        torch.maximum(w_max, w_fwd.amax(0), out=w_max)
        for index, (a, b, c) in enumerate(group):
            # voxel v gets x(v + d) with weight w_d(v); voxel v + d gets x(v) with the same weight
            x_fwd = xp[inner[0].start + a:inner[0].stop + a, inner[1].start + b:inner[1].stop + b,
                       inner[2].start + c:inner[2].stop + c]
            value_sum.addcmul_(w_fwd[index], x_fwd)
            w_bwd = w[index, s - a:s - a + shape[0], s - b:s - b + shape[1], s - c:s - c + shape[2]]
            x_bwd = xp[inner[0].start - a:inner[0].stop - a, inner[1].start - b:inner[1].stop - b,
                       inner[2].start - c:inner[2].stop - c]
            weight_sum += w_bwd
            value_sum.addcmul_(w_bwd, x_bwd)
            torch.maximum(w_max, w_bwd, out=w_max)
        if progress is not None:
            progress(min(1.0, (start + len(group)) / len(offsets)))
    # Classic NLM gives the centre voxel the largest weight of its neighbours rather than 1.
    # (A tiny floor keeps voxels whose neighbours all got weight 0 at their own value.)
    centre = torch.clamp(w_max, min=1e-12)
    weight_sum += centre
    value_sum += centre * x
    out = value_sum / weight_sum
    return (out * scale + offset).cpu().numpy().astype(np.float32)
