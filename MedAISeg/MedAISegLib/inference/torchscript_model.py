"""Run a segmentation network described by a :class:`~.model_card.ModelCard` on SimpleITK images.

The pipeline: optional reorientation of the first image to the card's ``orientation`` (SimpleITK
``DICOMOrient``: an exact permutation/flip of the voxel axes, e.g. "RAS" = i towards Right) ->
channels resampled onto that grid (multi-channel inputs such as the four BraTS MR sequences) ->
optional resampling to the card's spacing (same origin and direction)
-> per-channel normalisation -> :func:`~.sliding_window.sliding_window_inference` -> labels
(and optional probabilities/entropy) resampled back onto the first image's exact grid (nearest
neighbour for labels, linear for probabilities; a pure reorientation maps back voxel for voxel).
Images are LPS (SimpleITK); the returned geometry is RAS.

TorchScript models with a card run no configuration code: they need no trust (unlike MONAI
bundles, see :mod:`.bundle_trust`); the archive is still loaded with clear errors for truncated
files (:mod:`.model_checks`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedAICommonLib.geometry import Geometry

from MedAISegLib.inference.memory_guard import choose_setting, free_memory
from MedAISegLib.inference.model_card import LabelInfo, ModelCard, find_card, normalize_array
from MedAISegLib.inference.model_checks import explain_channel_error, load_torchscript_file
from MedAISegLib.inference.sliding_window import sliding_window_inference


@dataclass
class InferenceResult:
    """Labels (uint8 KJI) on the reference input's grid, its RAS geometry, the label names/colours,
    optional probabilities ``(classes, k, j, i)`` and entropy (nats), and run information."""

    labels: np.ndarray
    geometry: Geometry
    segments: list[LabelInfo]
    probabilities: np.ndarray | None = None
    entropy: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def load_torchscript(path, device="cpu"):
    """Load a TorchScript model file (``.ts``/``.pt`` saved by ``torch.jit.save``); ValueError when it is
    truncated/corrupt (re-download or re-export) or not TorchScript."""
    return load_torchscript_file(path, device)


def load_torchscript_with_card(path, device="cpu") -> tuple[object, ModelCard]:
    """A TorchScript model and its card (see :func:`~.model_card.find_card`)."""
    path = Path(path)
    card_path = find_card(path)
    if card_path is None:
        raise ValueError(f"No model card found for {path}; put {path.name}.json or model_card.json beside it.")
    return load_torchscript(path, device), ModelCard.load(card_path)


def _resample(image: sitk.Image, reference: sitk.Image, interpolator) -> sitk.Image:
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)


def prepare_channels(images: list[sitk.Image], card: ModelCard) -> tuple[np.ndarray, sitk.Image]:
    """``(C, ...)`` float32 network input in the card's axis order, and the working-grid image."""
    if len(images) != card.channels:
        names = ", ".join(str(item.get("name", "?")) for item in card.inputs)
        raise ValueError(f"The model takes {card.channels} input volume(s) ({names}), got {len(images)}.")
    reference = images[0]
    oriented = sitk.DICOMOrient(reference, card.orientation) if card.orientation else reference
    work = oriented
    if card.spacing_mm is not None and not np.allclose(oriented.GetSpacing(), card.spacing_mm, rtol=1e-4):
        size = [max(1, int(round(n * s0 / s))) for n, s0, s in
                zip(oriented.GetSize(), oriented.GetSpacing(), card.spacing_mm)]
        work = sitk.Image(size, sitk.sitkFloat32)
        work.SetOrigin(oriented.GetOrigin())
        work.SetDirection(oriented.GetDirection())
        work.SetSpacing(tuple(float(s) for s in card.spacing_mm))
    channels = []
    for image in images:
        if work is oriented and _same_grid(image, reference):  # exact: a permutation of the voxels
            resampled = sitk.Cast(sitk.DICOMOrient(image, card.orientation) if card.orientation else image,
                                  sitk.sitkFloat32)
        else:
            resampled = _resample(image, work, sitk.sitkLinear)
        array = normalize_array(sitk.GetArrayFromImage(resampled), card.normalization)
        channels.append(array.transpose(2, 1, 0) if card.axis_order == "ijk" else array)
    return np.stack(channels), work


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def probabilities_by_label(probabilities: np.ndarray, activation: str) -> np.ndarray:
    """Probabilities indexed by label value: sigmoid outputs (channel c = label c + 1) get a background
    channel ``1 - max`` in front; softmax/none outputs already have background as channel 0."""
    if activation != "sigmoid":
        return probabilities
    return np.concatenate([1.0 - probabilities.max(axis=0, keepdims=True), probabilities]).astype(np.float32)


def restore_to_reference(array_kji: np.ndarray, work: sitk.Image, reference: sitk.Image, labels: bool) -> np.ndarray:
    """Resample a working-grid KJI array onto the reference image's grid (no-op on the same grid;
    exact for a reoriented grid, whose voxel centres coincide with the reference's)."""
    if _same_grid(work, reference):
        return array_kji
    image = sitk.GetImageFromArray(array_kji)
    image.CopyInformation(work)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def run_model(network, card: ModelCard, images: list[sitk.Image], device="cpu", batch_size: int = 4,
              amp: bool = True, tta_flips: bool = False, return_probabilities: bool = False,
              return_entropy: bool = False, overlap: float | None = None, progress=None) -> InferenceResult:
    """Segment ``images`` (one SimpleITK image per card input) with ``network``; see the module docstring."""
    device = torch.device(device)
    start = time.perf_counter()
    data, work = prepare_channels(images, card)
    parameters = sum(p.numel() for p in network.parameters()) if hasattr(network, "parameters") else 0
    device_free, host_free = free_memory(device)
    setting = choose_setting(data.shape[1:], card.channels, card.classes, card.roi_size, device_free, host_free,
                             batch_size, parameters, amp and device.type == "cuda", card.activation_bytes_per_voxel)
    if not setting.fits:
        raise ValueError(f"Not enough memory for this model and volume. {setting.advice}")
    try:
        result = sliding_window_inference(network, data, card.roi_size,
                                          overlap=card.overlap if overlap is None else overlap,
                                          batch_size=setting.batch_size, device=device, amp=amp,
                                          tta_flips=tta_flips, activation=card.activation,
                                          return_probabilities=return_probabilities, return_entropy=return_entropy,
                                          cpu_stitching=setting.cpu_stitching, progress=progress)
    except RuntimeError as error:
        explained = explain_channel_error(error, len(images), f"{card.name!r} (card: {card.channels} input(s))")
        if explained is not None:
            raise explained from error
        raise

    def to_kji(a):
        return np.ascontiguousarray(a.transpose(2, 1, 0)) if card.axis_order == "ijk" else a

    reference = images[0]
    labels = restore_to_reference(to_kji(result.labels), work, reference, labels=True).astype(np.uint8)
    out = InferenceResult(labels=labels, geometry=Geometry.from_sitk(reference).to_space("RAS"),
                          segments=list(card.labels))
    if result.probabilities is not None:
        out.probabilities = np.stack([restore_to_reference(to_kji(p), work, reference, labels=False)
                                      for p in probabilities_by_label(result.probabilities, card.activation)])
    if result.entropy is not None:
        out.entropy = restore_to_reference(to_kji(result.entropy), work, reference, labels=False)
    out.info = {"device": str(device), "batch_size": result.batch_size, "windows": result.windows,
                "cpu_stitching": result.stitched_on_cpu, "working_shape_kji": list(data.shape[1:][::-1])
                if card.axis_order == "ijk" else list(data.shape[1:]),
                "resampled": not _same_grid(work, sitk.DICOMOrient(reference, card.orientation)
                                             if card.orientation else reference), "orientation": card.orientation,
                "memory_estimate_bytes": {"device": setting.device_bytes, "host": setting.host_bytes},
                "seconds": round(time.perf_counter() - start, 3)}
    return out
