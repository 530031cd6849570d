"""Sliding-window inference with Gaussian blending, batching, mixed precision and OOM fallback.

Input: a ``(C, X, Y, Z)`` array/tensor (channel first, then the three spatial axes in the order
the network expects; MedAI feeds MONAI's order, i.e. i, j, k). The network maps a
``(B, C, *roi)`` batch to ``(B, classes, *roi)`` logits (or probabilities, ``activation="none"``).
Windows are placed like MONAI's (step ``roi * (1 - overlap)``, last window flush with the end),
each window's output is weighted by a Gaussian importance map (sigma = ``sigma_scale * roi``) and
the weighted sum is divided by the summed weights. Output: argmax labels in uint8 (no full float
maps unless ``return_probabilities``), optional softmax probabilities and voxel-wise entropy (nats).

Device handling: the network runs on ``device``; on CUDA with ``amp`` the forward pass runs in
float16 autocast. On a CUDA out-of-memory error the run restarts with half the batch size and, once
the batch is 1, with the blending buffers on the CPU ("CPU stitching") instead of failing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SlidingWindowResult:
    """Labels (uint8, spatial shape), optional probabilities (classes, ...) float32 and entropy (nats)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    entropy: np.ndarray | None = None
    batch_size: int = 0
    stitched_on_cpu: bool = False
    windows: int = 0


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``roi`` covering ``size`` voxels (``size >= roi``)."""
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def gaussian_importance(roi, sigma_scale: float = 0.125, device="cpu") -> torch.Tensor:
    """Separable Gaussian weight map of shape ``roi`` (max 1, floored at 1e-3 so edges still count)."""
    axes = []
    for n in roi:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return torch.clamp(w / w.max(), min=1e-3)


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA (or other device) out-of-memory error."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _run(network, image: torch.Tensor, roi, overlap, batch_size, device, amp, mode, sigma_scale,
         stitch_device, flips, progress):
    spatial = image.shape[1:]
    pad = []  # axes shorter than the ROI are zero-padded on both sides, as MONAI does
    for n, r in zip(reversed(spatial), reversed(roi)):
        diff = max(0, r - n)
        pad += [diff // 2, diff - diff // 2]
    padded = F.pad(image, pad) if any(pad) else image
    full = padded.shape[1:]
    starts = list(itertools.product(*[window_starts(n, r, overlap) for n, r in zip(full, roi)]))
    weight = gaussian_importance(roi, sigma_scale, stitch_device) if mode == "gaussian" else \
        torch.ones(tuple(roi), device=stitch_device)
    accum = None
    norm = torch.zeros(full, device=stitch_device)
    use_amp = amp and device.type == "cuda"
    for first in range(0, len(starts), batch_size):
        group = starts[first:first + batch_size]
        batch = torch.stack([padded[:, a:a + roi[0], b:b + roi[1], c:c + roi[2]] for a, b, c in group]).to(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            out = network(batch).float()
            for axes in flips:
                out += torch.flip(network(torch.flip(batch, axes)).float(), axes)
        if flips:
            out /= len(flips) + 1
        out = out.to(stitch_device)
        if accum is None:
            accum = torch.zeros((out.shape[1], *full), device=stitch_device)
        for index, (a, b, c) in enumerate(group):
            accum[:, a:a + roi[0], b:b + roi[1], c:c + roi[2]] += out[index] * weight
            norm[a:a + roi[0], b:b + roi[1], c:c + roi[2]] += weight
        if progress is not None:
            progress(min(1.0, (first + len(group)) / len(starts)))
    accum /= norm
    crop = tuple(slice(pad[2 * (2 - a)], pad[2 * (2 - a)] + n) for a, n in enumerate(spatial))
    return accum[(slice(None), *crop)], len(starts)


def _activate(blended: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, labels) of the blended network outputs (C, X, Y, Z) for ``activation``."""
    if activation == "softmax":
        probabilities = torch.softmax(blended, dim=0)
        return probabilities, torch.argmax(probabilities, dim=0)
    if activation == "sigmoid":
        probabilities = torch.sigmoid(blended)
        best = torch.argmax(probabilities, dim=0)
        return probabilities, torch.where(probabilities.max(dim=0).values >= 0.5, best + 1, torch.zeros_like(best))
    if activation == "none":
        return blended, torch.argmax(blended, dim=0)
    raise ValueError(f"Unknown activation {activation!r}; use softmax, sigmoid or none")


def sliding_window_inference(network, image, roi_size, overlap: float = 0.25, batch_size: int = 4,
                             device="cpu", amp: bool = True, mode: str = "gaussian", sigma_scale: float = 0.125,
                             tta_flips: bool = False, activation: str = "softmax",
                             return_probabilities: bool = False, return_entropy: bool = False,
                             cpu_stitching: bool = False, progress=None) -> SlidingWindowResult:
    """Run ``network`` over ``image`` (``(C, X, Y, Z)``) window by window; see the module docstring.

    ``roi_size``: window size (voxels, three ints; a dimension larger than the image is padded).
    ``overlap`` in [0, 1); ``mode``: ``gaussian`` or ``constant`` blending; ``tta_flips``: also
    average the outputs of the 7 flipped copies of each window (8x the work); ``activation``:
    ``softmax`` (logits in), ``sigmoid`` (multi-label, threshold 0.5, background = 0 where no class)
    or ``none`` (probabilities in). ``cpu_stitching`` keeps the blending buffers in host memory.
    """
    device = torch.device(device)
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image,
                             dtype=torch.float32)
    if tensor.ndim != 4:
        raise ValueError(f"Sliding-window input must be (channels, X, Y, Z), got shape {tuple(tensor.shape)}")
    roi = [int(r) for r in roi_size]
    flips = [axes for n in (1, 2, 3) for axes in itertools.combinations((2, 3, 4), n)] if tta_flips else []
    batch = max(1, int(batch_size))
    on_cpu = cpu_stitching or device.type == "cpu"
    network = network.to(device) if hasattr(network, "to") else network
    if hasattr(network, "eval"):
        network.eval()
    while True:
        stitch = torch.device("cpu") if on_cpu else device
        try:
            blended, count = _run(network, tensor, roi, overlap, batch, device, amp, mode, sigma_scale, stitch,
                                  flips, progress)
            break
        except (RuntimeError, torch.jit.Error) as error:  # CUDA OOM (TorchScript raises jit.Error): smaller batch, then CPU stitching
            if not is_out_of_memory(error) or (batch == 1 and on_cpu):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch > 1:
                batch //= 2
            else:
                on_cpu = True
    probabilities, labels = _activate(blended, activation)
    if int(labels.max()) > 255:
        raise ValueError("More than 255 classes do not fit the uint8 label map")
    result = SlidingWindowResult(labels=labels.to(torch.uint8).cpu().numpy(), batch_size=batch,
                                 stitched_on_cpu=on_cpu, windows=count)
    if return_entropy:
        p = probabilities.clamp_min(1e-8)
        result.entropy = (-(p * p.log()).sum(dim=0)).cpu().numpy().astype(np.float32)
    if return_probabilities:
        result.probabilities = probabilities.cpu().numpy().astype(np.float32)
    return result
