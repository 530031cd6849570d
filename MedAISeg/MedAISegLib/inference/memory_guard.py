"""Memory estimate for a sliding-window run, and the choice of a setting that fits.

Figures are estimates (bytes): ``device`` = model weights + one batch of windows with the
network's activations (``activation_bytes_per_voxel`` per window voxel, a rough figure for a
U-Net; half under float16 autocast) + the blending buffers when they live on the device;
``host`` = input channels + blending buffers (classes + 1 float32 maps of the working grid) +
the uint8 label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MemoryEstimate:
    """Estimated peak bytes on the compute device and in host memory, and the setting they assume."""

    device_bytes: int
    host_bytes: int
    batch_size: int
    cpu_stitching: bool
    fits: bool = True
    advice: str = ""


def estimate_memory(
    shape,
    channels: int,
    classes: int,
    roi_size,
    batch_size: int = 4,
    parameters: int = 0,
    cpu_stitching: bool = False,
    amp: bool = False,
    activation_bytes_per_voxel: float = 512.0,
) -> MemoryEstimate:
    """Estimate the memory of a run on a working grid of ``shape`` voxels (3 ints)."""
    voxels = int(np.prod(shape))
    roi_voxels = int(np.prod(roi_size))
    per_voxel = activation_bytes_per_voxel * (0.5 if amp else 1.0)
    buffers = (classes + 1) * voxels * 4
    device = parameters * 4 + batch_size * roi_voxels * (per_voxel + 4 * (channels + classes))
    if not cpu_stitching:
        device += buffers + channels * voxels * 4
    host = channels * voxels * 4 + buffers + voxels
    return MemoryEstimate(int(device), int(host), batch_size, cpu_stitching)


def choose_setting(
    shape,
    channels: int,
    classes: int,
    roi_size,
    device_free_bytes: int | None,
    host_free_bytes: int | None,
    batch_size: int = 4,
    parameters: int = 0,
    amp: bool = False,
    activation_bytes_per_voxel: float = 512.0,
) -> MemoryEstimate:
    """The largest batch (halving from ``batch_size``) that fits, moving stitching to the CPU if
    needed; ``fits`` is False with ``advice`` (lower resolution / CPU) when nothing fits.
    Free-memory figures of None mean "unknown" (assumed to fit)."""
    for cpu_stitching in (False, True):
        batch = batch_size
        while batch >= 1:
            estimate = estimate_memory(
                shape, channels, classes, roi_size, batch, parameters, cpu_stitching, amp, activation_bytes_per_voxel
            )
            device_ok = device_free_bytes is None or estimate.device_bytes <= device_free_bytes
            host_ok = host_free_bytes is None or estimate.host_bytes <= host_free_bytes
            if device_ok and host_ok:
                return estimate
            batch //= 2
    estimate = estimate_memory(shape, channels, classes, roi_size, 1, parameters, True, amp, activation_bytes_per_voxel)
    estimate.fits = False
    factor = max(estimate.host_bytes / max(host_free_bytes or 1, 1), 1.0) ** (1 / 3)
    estimate.advice = (
        f"Needs about {estimate.device_bytes / 2**30:.1f} GiB on the device and "
        f"{estimate.host_bytes / 2**30:.1f} GiB of RAM; run at a coarser spacing (about "
        f"{factor:.1f}x the voxel size), on a smaller crop, or on the CPU."
    )
    return estimate


def free_memory(device) -> tuple[int | None, int | None]:
    """(free device bytes or None, free host bytes or None) for a ``torch.device``."""
    import torch

    device_free = None
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        device_free = int(torch.cuda.mem_get_info(device)[0])
    host_free = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    host_free = int(line.split()[1]) * 1024
    except OSError:
        pass
    return device_free, host_free
