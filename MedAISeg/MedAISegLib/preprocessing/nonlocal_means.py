"""3D non-local-means denoising in torch (CPU or CUDA): voxelwise and blockwise box-filter NLM.

``mode="voxelwise"`` (default): for every offset ``d`` of the search window the squared difference
image ``(x - x(. + d))**2`` is summed over the patch with a separable box filter, which gives the
patch distance of every voxel to its ``d``-neighbour at once (Darbon et al. 2008; the same idea as
scikit-image's ``fast_mode``). Weights ``exp(-max(dist - 2 sigma^2, 0) / h^2)`` are accumulated
into a weighted mean. Offsets are processed in chunks stacked along the batch axis, so the work is
vectorised and memory stays bounded (``chunk_voxels``). The symmetry ``dist_d(x) = dist_-d(x + d)``
halves the work: each pair ``{d, -d}`` is computed once and credited to both voxels.

``mode="blockwise"``: the optimised blockwise NLM of Coupe et al. 2008 (IEEE TMI 27(4):425-441).
Weights are computed only at block centres on a sub-grid of step ``block_step`` (n) along each axis;
the block (the patch, radius ``patch_radius``) around a centre ``c`` is restored as a whole,
``A_c(b) = sum_d w_d(c) x(c + b + d) / sum_d w_d(c)``, and every voxel combines the estimates of
the overlapping blocks that contain it. Here the overlap is combined weighted by each block's
total weight (BM3D-style aggregation): ``u(v) = sum_c sum_d w_d(c) x(v + d) / sum_c sum_d w_d(c)``
over blocks ``c`` containing ``v`` (centre weight = the block's largest weight, as voxelwise).
This needs one pass over the offsets: each offset's sub-grid weights are spread back over their
blocks (a strided transposed box filter), so the weight work (exp, box sums) shrinks by n^3.
The squared difference of ``{d, -d}`` is shared (``sq_-d(v) = sq_d(v - d)``).

Arrays are KJI; ``spacing`` is not used (patches and search windows are in voxels, as in
scikit-image). Intensities keep their unit (e.g. HU); ``h`` and ``sigma`` are in the same unit.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

_LN2 = float(np.log(2.0))
MODES = ("voxelwise", "blockwise")
BACKENDS = ("auto", "numba", "torch")


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


def _strided_box(x: torch.Tensor, radius: int, steps, starts, counts) -> torch.Tensor:
    """Box sums of side 2r+1 over dims 1..3 of ``x`` (N, D, H, W), evaluated only at the box
    starts ``starts[i] + k * steps[i]`` (k < ``counts[i]``) along each axis (outer axis first, which
    shrinks the data most cheaply: whole planes)."""
    size = 2 * radius + 1
    for axis, (step, start, count) in enumerate(zip(steps, starts, counts), start=1):

        def view(j, x=x, axis=axis, step=step, start=start, count=count):
            index = [slice(None)] * 4
            index[axis] = slice(start + j, start + j + (count - 1) * step + 1, step)
            return x[tuple(index)]

        if size == 1:
            x = view(0).contiguous()
            continue
        out = torch.add(view(0), view(1))
        for j in range(2, size):
            out += view(j)
        x = out
    return x


def _spread(w: torch.Tensor, radius: int, steps, shape, axes=(3, 2, 1)) -> torch.Tensor:
    """Transpose of :func:`_strided_box` with starts 0: add each sub-grid value ``w[k]`` (centre
    ``k * step``, ``step = steps[axis]``) to the voxels of its block ``[k*step - r, k*step + r]``,
    cropped to ``shape``.

    Per axis, the voxels ``k * step + q`` (residue q) sum the centres ``k + t`` with
    ``|t * step - q| <= r``; the outer axis goes last so the full-size writes are whole planes.
    """
    for axis in axes:
        step = steps[axis - 1]
        reach = radius // step + 1
        n, count = shape[axis - 1], w.shape[axis]
        out_shape = list(w.shape)
        out_shape[axis] = n
        out = w.new_empty(out_shape)
        for q in range(step):
            index = [slice(None)] * 4
            index[axis] = slice(q, n, step)
            dest = out[tuple(index)]
            length = dest.shape[axis]
            dest.copy_(w.narrow(axis, 0, length))  # t = 0: q <= radius always
            for t in range(-reach, reach + 1):
                if t == 0 or abs(t * step - q) > radius:
                    continue
                first, last = max(0, -t), min(length, count - t)  # centres k + t that exist
                if last > first:
                    dest.narrow(axis, first, last - first).add_(w.narrow(axis, first + t, last - first))
        w = out
    return w


def _spread_outer_accumulate(target: torch.Tensor, w: torch.Tensor, x: torch.Tensor, radius: int, step: int):
    """``target += spread_along_axis0(w) * x`` for 3D tensors, without materialising the spread:
    the last (outer-axis) step of :func:`_spread` fused with the weighted sum of values."""
    reach = radius // step + 1
    count = w.shape[0]
    for q in range(step):
        dest, values = target[q::step], x[q::step]
        length = dest.shape[0]
        for t in range(-reach, reach + 1):
            if abs(t * step - q) > radius:
                continue
            first, last = max(0, -t), min(length, count - t)
            if last > first:
                dest[first:last].addcmul_(w[first + t : last + t], values[first:last])


def _weights_(dist: torch.Tensor, var2: float, h2: float) -> torch.Tensor:
    """In place: ``exp(-max(dist - var2, 0) / h2)`` as ``exp2`` (several times cheaper than ``exp``
    on CPUs); exponents beyond 2**-100 are clamped there, which avoids slow denormals."""
    return dist.sub_(var2).mul_(-1.0 / (h2 * _LN2)).clamp_(min=-100.0, max=0.0).exp2_()


def _half_offsets(search_radius: int) -> list[tuple[int, int, int]]:
    """Offsets of the search window with one of each pair {d, -d}, without (0, 0, 0)."""
    r = range(-search_radius, search_radius + 1)
    return [d for d in itertools.product(r, r, r) if d > (0, 0, 0)]


def _padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror padding (as scikit-image), or edge replication for volumes thinner than the padding."""
    mode = "reflect" if min(x.shape) > pad else "replicate"
    return F.pad(x[None, None], (pad,) * 6, mode=mode)[0, 0]


def _voxelwise(x: torch.Tensor, h2: float, var2: float, p: int, s: int, chunk_voxels: int, progress):
    shape = x.shape
    device = x.device
    pad = s + p
    xp = _padded(x, pad)
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
        group = offsets[start : start + chunk]
        diff = diff_buffer[: len(group)]
        for index, (a, b, c) in enumerate(group):
            torch.sub(
                xpp[s + a : s + a + grown[0], s + b : s + b + grown[1], s + c : s + c + grown[2]],
                base[: grown[0], : grown[1], : grown[2]],
                out=diff[index],
            )
        dist = _box_sum(diff.square_(), p)  # (n, D+2s, H+2s, W+2s): distance at voxel v between v and v + d
        w = _weights_(dist, var2, h2)
        w_fwd = w[:, s : s + shape[0], s : s + shape[1], s : s + shape[2]]
        weight_sum += w_fwd.sum(0)
        torch.maximum(w_max, w_fwd.amax(0), out=w_max)
        for index, (a, b, c) in enumerate(group):
            # voxel v gets x(v + d) with weight w_d(v); voxel v + d gets x(v) with the same weight
            x_fwd = xp[
                inner[0].start + a : inner[0].stop + a,
                inner[1].start + b : inner[1].stop + b,
                inner[2].start + c : inner[2].stop + c,
            ]
            value_sum.addcmul_(w_fwd[index], x_fwd)
            w_bwd = w[index, s - a : s - a + shape[0], s - b : s - b + shape[1], s - c : s - c + shape[2]]
            x_bwd = xp[
                inner[0].start - a : inner[0].stop - a,
                inner[1].start - b : inner[1].stop - b,
                inner[2].start - c : inner[2].stop - c,
            ]
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
    return value_sum / weight_sum


def _blockwise(x: torch.Tensor, h2: float, var2: float, p: int, s: int, steps, chunk_voxels: int, progress):
    shape = tuple(x.shape)
    device = x.device
    counts = [(n + step - 1) // step for n, step in zip(shape, steps)]  # centres 0, n, 2n, ... per axis
    pad = p + 2 * s
    xp = _padded(x, pad)
    # sq_d(u) = (x(u + d) - x(u))^2 for u in [-p-s, N+p+s) per axis; index u' = u + p + s.
    grown = [n + 2 * p + 2 * s for n in shape]
    weight_sub = torch.zeros(counts, device=device)
    w_max = torch.zeros(counts, device=device)
    value_sum = torch.zeros(shape, device=device)
    offsets = _half_offsets(s)
    chunk = max(1, int(chunk_voxels // (2 * int(np.prod(grown)) + 2 * int(np.prod(shape)))))
    sq_buffer = torch.empty((chunk, *grown), device=device)
    for start in range(0, len(offsets), chunk):
        group = offsets[start : start + chunk]
        sq = sq_buffer[: len(group)]
        for index, (a, b, c) in enumerate(group):
            torch.sub(
                xp[s + a : s + a + grown[0], s + b : s + b + grown[1], s + c : s + c + grown[2]],
                xp[s : s + grown[0], s : s + grown[1], s : s + grown[2]],
                out=sq[index],
            )
        sq.square_()
        # Distance of the block at centre c to the block at c + d: boxes starting at u' = c + s;
        # to the block at c - d: sq_d shifted by -d, i.e. boxes starting at c + s - d.
        dist_fwd = _strided_box(sq, p, steps, (s, s, s), counts)
        dist_bwd = torch.cat(
            [
                _strided_box(sq[index : index + 1], p, steps, (s - a, s - b, s - c), counts)
                for index, (a, b, c) in enumerate(group)
            ]
        )
        w = _weights_(torch.cat([dist_fwd, dist_bwd]), var2, h2)  # (2n, counts...): +d then -d
        weight_sub += w.sum(0)
        torch.maximum(w_max, w.amax(0), out=w_max)
        planes = _spread(w, p, steps, shape, axes=(3, 2))  # spread within planes; across them below
        signed = list(group) + [(-a, -b, -c) for a, b, c in group]
        for index, (a, b, c) in enumerate(signed):
            _spread_outer_accumulate(
                value_sum,
                planes[index],
                xp[pad + a : pad + a + shape[0], pad + b : pad + b + shape[1], pad + c : pad + c + shape[2]],
                p,
                steps[0],
            )
        if progress is not None:
            progress(min(1.0, (start + len(group)) / len(offsets)))
    centre = torch.clamp(w_max, min=1e-12)
    value_sum.addcmul_(_spread(centre[None], p, steps, shape)[0], x)
    weight_sum = _spread((weight_sub + centre)[None], p, steps, shape)[0]
    return value_sum / weight_sum


def _checked_steps(
    volume: np.ndarray, patch_radius: int, search_radius: int, mode: str, backend: str, block_step
) -> tuple[int, int, int]:
    """Refuses a bad volume, radius, mode, backend or block step; returns the (k, j, i) block steps."""
    if volume.ndim != 3:
        raise ValueError(f"Non-local means needs a 3D array (k, j, i), got shape {volume.shape}")
    if patch_radius < 0 or search_radius < 1:
        raise ValueError("patch_radius must be >= 0 and search_radius >= 1 (voxels)")
    if mode not in MODES:
        raise ValueError(f"Unknown NLM mode {mode!r}; choose one of {', '.join(MODES)}.")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown NLM backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    steps = tuple(int(n) for n in np.broadcast_to(block_step, 3))
    if mode == "blockwise" and not all(1 <= n <= patch_radius + 1 for n in steps):
        raise ValueError(
            f"block_step must be between 1 and patch_radius + 1 = {patch_radius + 1} voxels "
            f"(blocks must cover every voxel), got {block_step}."
        )
    return steps


def _numba_nlm(
    x: torch.Tensor, h2: float, var2: float, p: int, s: int, steps, mode: str, chunk_voxels: int, progress
) -> torch.Tensor:
    """The CPU (numba) kernels of either mode on the scaled volume ``x`` (KJI)."""
    from MedAISegLib.preprocessing import nonlocal_means_numba

    threads = torch.get_num_threads()
    planes = max(1, chunk_voxels // max(1, x.shape[1] * x.shape[2] * (2 * p + 1)))  # per call
    # Pad as the torch code of the mode does (the width decides between reflection and replication for
    # thin volumes): blockwise needs p + s; voxelwise p + 2s (reflect p + s, then replicate s).
    if mode == "blockwise":
        r = range(-s, s + 1)
        offsets = np.array([d for d in itertools.product(r, r, r) if d != (0, 0, 0)], dtype=np.int64)
        out = nonlocal_means_numba.blockwise(
            _padded(x, p + 2 * s)[s:-s, s:-s, s:-s].contiguous().numpy(),
            x.shape,
            p,
            s,
            steps,
            1.0 / (h2 * _LN2),
            var2,
            offsets,
            planes,
            threads,
            progress,
        )
    else:
        xp = F.pad(_padded(x, p + s)[None, None], (s,) * 6, mode="replicate")[0, 0]
        out = nonlocal_means_numba.voxelwise(
            xp.numpy(),
            x.shape,
            p,
            s,
            1.0 / (h2 * _LN2),
            var2,
            np.array(_half_offsets(s), dtype=np.int64),
            planes,
            threads,
            progress,
        )
    return torch.from_numpy(out)


def nonlocal_means(
    array: np.ndarray,
    h: float | None = None,
    patch_radius: int = 1,
    search_radius: int = 3,
    sigma: float | None = None,
    device: str | torch.device = "cpu",
    chunk_voxels: int = 2**22,
    progress=None,
    mode: str = "voxelwise",
    block_step: int | tuple[int, int, int] = 2,
    backend: str = "auto",
) -> np.ndarray:
    """Denoise a 3D KJI array with non-local means; returns float32 of the same shape.

    ``h``: filter strength (intensity unit); default ``0.8 * sigma``. ``sigma``: noise standard
    deviation (default: estimated). ``patch_radius``/``search_radius`` in voxels (patch side
    2p+1, search side 2s+1; scikit-image's ``patch_size = 2p+1`` and ``patch_distance = s``).
    ``device``: ``"cpu"``, ``"cuda"`` or a ``torch.device`` (same results within float32 rounding).
    ``chunk_voxels`` bounds the size of intermediate tensors (elements; 2**22 floats = 16 MiB, which
    keeps the work cache-friendly on CPUs; raise it on GPUs).
    ``progress``: optional callable ``(fraction)`` called between chunks (may raise to cancel).
    ``mode``: ``"voxelwise"`` (classic NLM) or ``"blockwise"`` (Coupe et al. 2008: weights on a
    sub-grid of step ``block_step`` voxels, one int or (k, j, i) steps; blocks = patches of radius
    ``patch_radius``; needs ``1 <= step <= patch_radius + 1`` so that the blocks cover every voxel).
    """
    volume = np.asarray(array)
    steps = _checked_steps(volume, patch_radius, search_radius, mode, backend, block_step)
    sigma = estimate_noise_sigma(volume) if sigma is None else float(sigma)
    h = 0.8 * sigma if h is None else float(h)
    if h <= 0:
        raise ValueError(f"NLM filter strength h must be > 0 (intensity units), got {h}; set h or sigma.")
    device = torch.device(device)
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"The numba NLM backend runs on the CPU only; use backend='torch' (or 'auto') on {device}.")
    # Work on zero-mean, unit-scaled data for float32 accuracy; scale h and sigma alike.
    offset, scale = float(volume.mean()), float(volume.std()) or 1.0
    x = torch.as_tensor((volume.astype(np.float32) - offset) / scale, device=device)
    # Distances are box sums (not means): fold the patch size into h^2 and 2 sigma^2.
    patch_voxels = float((2 * patch_radius + 1) ** 3)
    h2 = (h / scale) ** 2 * patch_voxels
    var2 = 2.0 * (sigma / scale) ** 2 * patch_voxels
    p, s = int(patch_radius), int(search_radius)
    if device.type == "cpu" and backend != "torch":
        out = _numba_nlm(x, h2, var2, p, s, steps, mode, chunk_voxels, progress)
    elif mode == "blockwise":
        out = _blockwise(x, h2, var2, p, s, steps, chunk_voxels, progress)
    else:
        out = _voxelwise(x, h2, var2, p, s, chunk_voxels, progress)
    return (out * scale + offset).cpu().numpy().astype(np.float32)
