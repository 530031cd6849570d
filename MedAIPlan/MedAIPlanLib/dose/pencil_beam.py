"""matRad's singular-value-decomposed photon pencil beam (Bortfeld et al. 1993, Med Phys 20:311).

Physics as ``matRad_PhotonPencilBeamSVDEngine`` (uniform primary fluence, bixel-based):

* The square bixel aperture (``bixel_width``, sampled at ``conv_res`` = 0.5 mm) is convolved with
  a Gaussian penumbra (FWHM ``penumbraFWHMatIso``, 5 sigma support) and then with each of the
  three radial SVD kernels of the SSD nearest to the beam's central-ray SSD (kernels sampled on
  the same 0.5 mm grid up to ``kernel_cutoff``). Discrete sums, no area factor, as matRad.
* Bixel dose at a voxel: ``sum_k beta_k/(beta_k-m) (exp(-m d) - exp(-beta_k d)) K_k(x, z)``
  times the inverse-square factor ``(SAD / r)^2``; d is the radiological depth (mm), r the
  distance from the source and (x, z) the lateral offset from the bixel's central ray projected
  to the isocentre plane.

Everything here works on torch tensors (CPU or CUDA).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch

from MedAICommonLib.devices import torch_threads

from MedAIPlanLib.dose.matrad_io import PhotonMachine


@dataclass
class ConvolvedKernels:
    """The three aperture-convolved kernels on a square grid: values[k, row = z, col = x]."""

    values: torch.Tensor  # (3, n, n)
    start_mm: float  # coordinate of index 0 (both axes)
    res_mm: float
    ssd_mm: float

    @property
    def values_last(self) -> torch.Tensor:
        """(n, n, 3) contiguous copy (cached) for gathers."""
        if getattr(self, "_last", None) is None:
            self._last = self.values.permute(1, 2, 0).contiguous()
        return self._last

    def to(self, device) -> ConvolvedKernels:
        return ConvolvedKernels(self.values.to(device), self.start_mm, self.res_mm, self.ssd_mm)


def _axis(limit: int, res: float) -> np.ndarray:
    return np.arange(-limit, limit) * res


def _fftconv2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full linear 2D convolution of the last two dims by FFT (on 5-smooth lengths: several times faster)."""
    shape = (a.shape[-2] + b.shape[-2] - 1, a.shape[-1] + b.shape[-1] - 1)
    fast = tuple(scipy.fft.next_fast_len(n, real=True) for n in shape)
    fa = torch.fft.rfft2(a, s=fast)
    fb = torch.fft.rfft2(b, s=fast)
    return torch.fft.irfft2(fa * fb, s=fast)[..., : shape[0], : shape[1]].contiguous()


def convolve_kernels(
    machine: PhotonMachine,
    ssd_mm: float,
    bixel_width: float,
    conv_res: float = 0.5,
    kernel_cutoff: float | None = None,
    device: str | torch.device = "cpu",
) -> ConvolvedKernels:
    """Aperture * Gaussian penumbra * SVD kernels of the SSD nearest to ``ssd_mm`` (matRad's grids)."""
    res = float(conv_res)
    cutoff = float(machine.kernel_pos[-1] if kernel_cutoff is None else min(kernel_cutoff, machine.kernel_pos[-1]))
    field_limit = int(np.ceil(bixel_width / (2 * res)))
    n_field = int(np.floor(bixel_width / res))
    sigma = machine.penumbra_fwhm / np.sqrt(8 * np.log(2))
    gauss_limit = int(np.ceil(5 * sigma / res))
    gx = _axis(gauss_limit, res)
    gxx, gzz = np.meshgrid(gx, gx)
    gauss = np.exp(-(gxx**2 + gzz**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2 / res**2)
    kernel_limit = int(np.ceil(cutoff / res))
    kx = _axis(kernel_limit, res)
    kxx, kzz = np.meshgrid(kx, kx)
    r = np.sqrt(kxx**2 + kzz**2)
    ix = int(np.argmin(np.abs(machine.kernel_ssd - ssd_mm))) if np.isfinite(ssd_mm) else len(machine.kernel_ssd) - 1
    kernels = np.stack([np.interp(r, machine.kernel_pos, machine.kernels[ix, k], right=0.0) for k in range(3)])
    kernels[:, r > machine.kernel_pos[-1]] = 0.0
    dev = torch.device(device)
    # a few 576-point FFTs: one thread on the CPU (beside numba's kernels, more threads stall)
    with torch_threads(1) if dev.type == "cpu" else contextlib.nullcontext():
        field = torch.ones((n_field, n_field), dtype=torch.float64, device=dev)
        fpre = _fftconv2(field, torch.as_tensor(gauss, device=dev))
        conv = _fftconv2(fpre[None], torch.as_tensor(kernels, device=dev))
    start = -(field_limit + gauss_limit + kernel_limit) * res
    return ConvolvedKernels(conv.float(), float(start), res, float(machine.kernel_ssd[ix]))


def interpolate_kernels(kernels: ConvolvedKernels, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bilinear kernel values (N, 3) at iso-plane lateral offsets x, z (mm); 0 outside the grid."""
    v = kernels.values_last  # (n_z, n_x, 3): one gather fetches all three kernels
    n = v.shape[0]
    fx = (x - kernels.start_mm) / kernels.res_mm
    fz = (z - kernels.start_mm) / kernels.res_mm
    x0 = torch.floor(fx)
    z0 = torch.floor(fz)
    wx = (fx - x0).to(v.dtype)[:, None]
    wz = (fz - z0).to(v.dtype)[:, None]
    x0 = x0.long()
    z0 = z0.long()
    valid = ((x0 >= 0) & (z0 >= 0) & (x0 < n - 1) & (z0 < n - 1))[:, None]
    x0 = x0.clamp(0, n - 2)
    z0 = z0.clamp(0, n - 2)
    flat = v.reshape(n * n, 3)
    i00 = z0 * n + x0
    v00 = flat.index_select(0, i00)
    v01 = flat.index_select(0, i00 + 1)
    v10 = flat.index_select(0, i00 + n)
    v11 = flat.index_select(0, i00 + n + 1)
    top = v00 + wx * (v01 - v00)
    bottom = v10 + wx * (v11 - v10)
    return (top + wz * (bottom - top)) * valid


def depth_components(
    machine: PhotonMachine, rad_depth: torch.Tensor, geo_dist: torch.Tensor, sad: float, dtype=torch.float32
) -> torch.Tensor:
    """Per-voxel factors (N, 3): ``beta_k/(beta_k-m)(exp(-m d)-exp(-beta_k d)) (SAD/r)^2`` (ray independent)."""
    betas = torch.as_tensor(machine.betas, dtype=torch.float64, device=rad_depth.device)
    d = rad_depth.double()[:, None]
    comp = betas / (betas - machine.m) * (torch.exp(-machine.m * d) - torch.exp(-betas * d))
    return (comp * ((sad / geo_dist.double()) ** 2)[:, None]).to(dtype)


def bixel_dose(
    machine: PhotonMachine, kernel_values: torch.Tensor, rad_depth: torch.Tensor, geo_dist: torch.Tensor, sad: float
) -> torch.Tensor:
    """Dose per bixel weight at voxels: depth-dose components x kernels, inverse-square corrected."""
    comp = depth_components(machine, rad_depth, geo_dist, sad, kernel_values.dtype)
    return torch.clamp((comp * kernel_values).sum(dim=1), min=0.0)


def iso_lateral_offsets(q: torch.Tensor, ray_pos: torch.Tensor, sad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lateral offsets (x, z) at the iso plane of BEV points ``q`` (relative to the source) from rays.

    As matRad's ``calcGeoDists``: each point is rotated about the source so that the bixel's
    central ray becomes the beam axis, then its lateral offset is scaled to the SAD plane.
    ``q`` (N, 3) and ``ray_pos`` (N, 2) are paired row by row.
    """
    a = torch.zeros_like(q)
    a[:, 1] = 1.0
    # bixel direction from the source: target point (2x, SAD, 2z) - source (0, -SAD, 0) ~ (x, SAD, z)
    b = torch.stack([ray_pos[:, 0], torch.full_like(ray_pos[:, 0], sad), ray_pos[:, 1]], dim=1)
    b = b / torch.linalg.norm(b, dim=1, keepdim=True)
    w = torch.linalg.cross(a, b)
    c = (a * b).sum(dim=1, keepdim=True)
    s2 = (w * w).sum(dim=1, keepdim=True)
    factor = torch.where(s2 > 1e-20, (1 - c) / torch.clamp(s2, min=1e-20), torch.zeros_like(s2))
    wxq = torch.linalg.cross(w, q)
    rot = q - wxq + factor * torch.linalg.cross(w, wxq)  # R^T q  (row-vector q @ R in matRad)
    lat_x = rot[:, 0] / rot[:, 1] * sad
    lat_z = rot[:, 2] / rot[:, 1] * sad
    return lat_x, lat_z
