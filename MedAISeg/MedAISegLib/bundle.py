"""Run a MONAI Model Zoo bundle unchanged through ``monai.bundle.ConfigParser``.

Layout (e.g. ``spleen_ct_segmentation``): ``configs/metadata.json``, ``configs/inference.json``
(or ``.yaml``) with ``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing``, and
``models/model.pt`` (a state dict, loaded with ``torch.load(weights_only=True)``) or
``models/model.ts`` (TorchScript). The input volume(s) are written to a temporary NIfTI file so
that the bundle's own ``LoadImaged`` reads them exactly as it would read a user's file; the
bundle's preprocessing, inferer and postprocessing run as configured, except that
``SaveImaged`` steps are skipped (the result stays in memory). The final ``pred`` is mapped onto
the first input's exact grid through its affine (nearest neighbour), so bundles that resample or
reorient without inverting still land on the right voxels.

``inferer="medai"`` replaces a ``SlidingWindowInferer`` by MedAI's (same ROI and overlap; adds
Gaussian blending, AMP and the out-of-memory fallback); the default ``"bundle"`` keeps it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MedAICommonLib.geometry import Geometry

from .model_card import LabelInfo
from .sliding_window import sliding_window_inference
from .torchscript_model import InferenceResult


def is_bundle(path) -> bool:
    """True when ``path`` is a folder with ``configs/inference.json|yaml``."""
    path = Path(path)
    return path.is_dir() and any((path / "configs" / f"inference.{ext}").exists() for ext in ("json", "yaml", "yml"))


def _inference_config(bundle: Path) -> Path:
    for ext in ("json", "yaml", "yml"):
        candidate = bundle / "configs" / f"inference.{ext}"
        if candidate.exists():
            return candidate
    raise ValueError(f"{bundle} is not a MONAI bundle: configs/inference.json (or .yaml) is missing.")


def bundle_metadata(bundle) -> dict:
    """``configs/metadata.json`` of a bundle ({} when absent)."""
    path = Path(bundle) / "configs" / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def bundle_labels(metadata: dict) -> list[LabelInfo]:
    """Output classes from ``network_data_format.outputs.pred.channel_def`` (background dropped)."""
    channel_def = (metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def") or {})
    labels = [LabelInfo(int(k), str(v)) for k, v in channel_def.items()
              if int(k) != 0 and str(v).lower() != "background"]
    return sorted(labels, key=lambda item: item.value)


def _load_network(parser, bundle: Path, device):
    ts = bundle / "models" / "model.ts"
    pt = bundle / "models" / "model.pt"
    if pt.exists() and "network_def" in parser:
        network = parser.get_parsed_content("network_def")
        state = torch.load(str(pt), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        network.load_state_dict(state)
    elif ts.exists():
        network = torch.jit.load(str(ts), map_location="cpu")
    else:
        raise ValueError(f"No weights in {bundle}/models: expected model.pt (with network_def) or model.ts.")
    return network.to(device).eval()


def _without_save(transform):
    from monai.transforms import Compose, SaveImage, SaveImaged

    if isinstance(transform, Compose):
        kept = [t for t in transform.transforms if not isinstance(t, (SaveImaged, SaveImage))]
        return Compose(kept, map_items=transform.map_items, unpack_items=transform.unpack_items)
    return transform


def _medai_inferer(inferer, device, amp):
    from monai.inferers import SlidingWindowInferer

    if not isinstance(inferer, SlidingWindowInferer):
        return inferer

    def run(inputs, network):
        outputs = []
        for item in inputs:
            result = sliding_window_inference(network, item, inferer.roi_size, overlap=inferer.overlap,
                                              batch_size=inferer.sw_batch_size, device=device, amp=amp,
                                              activation="none", return_probabilities=True)
            outputs.append(torch.as_tensor(result.probabilities))
        return torch.stack(outputs)

    return run


def run_bundle(bundle, images: list[sitk.Image], device="cpu", inferer: str = "bundle", amp: bool = True,
               progress=None) -> InferenceResult:
    """Segment ``images`` (SimpleITK, LPS; several = channels as the bundle's ``image`` key expects)
    with the bundle at ``bundle``; labels come back on ``images[0]``'s grid (RAS geometry)."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    config = _inference_config(bundle)
    metadata = bundle_metadata(bundle)
    device = torch.device(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medai-bundle-") as tmp:
        parser = ConfigParser()
        parser.read_config(str(config))
        parser["bundle_root"] = str(bundle)
        parser["output_dir"] = tmp
        parser["device"] = f"$torch.device('{device}')"
        paths = []
        for index, image in enumerate(images):
            path = Path(tmp) / f"input_{index}.nii.gz"
            sitk.WriteImage(image, str(path))
            paths.append(str(path))
        if progress:
            progress(0.1)
        network = _load_network(parser, bundle, device)
        preprocessing = parser.get_parsed_content("preprocessing")
        bundle_inferer = parser.get_parsed_content("inferer")
        postprocessing = _without_save(parser.get_parsed_content("postprocessing")) if "postprocessing" in parser \
            else None
        data = preprocessing({"image": paths[0] if len(paths) == 1 else paths})
        if progress:
            progress(0.3)
        run = _medai_inferer(bundle_inferer, device, amp) if inferer == "medai" else bundle_inferer
        with torch.no_grad():
            pred = run(data["image"][None].to(device), network)
        data["pred"] = pred[0].detach().cpu() if hasattr(pred[0], "detach") else pred[0]
        data["image"] = data["image"].cpu() if hasattr(data["image"], "cpu") else data["image"]
        if postprocessing is not None:
            data = postprocessing(data)
        if progress:
            progress(0.9)
    pred = data["pred"]
    array = pred.detach().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred)
    affine = np.asarray(pred.affine) if hasattr(pred, "affine") else None
    if array.ndim == 4:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    labels_ijk = np.rint(array).astype(np.uint8)
    reference = Geometry.from_sitk(images[0]).to_space("RAS")
    labels = np.ascontiguousarray(labels_ijk.transpose(2, 1, 0))
    if affine is not None:
        pred_geometry = Geometry.from_ijk_to_physical(affine, "RAS", labels.shape)
        if not pred_geometry.same_grid(reference, tol_mm=1e-3):
            image = sitk.GetImageFromArray(labels)
            pred_geometry.apply_to_sitk(image)
            ref = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
            reference.apply_to_sitk(ref)
            labels = sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    elif labels.shape != reference.shape_kji:
        raise ValueError("The bundle's output has no affine and another shape than the input; cannot map it back.")
    segments = bundle_labels(metadata) or [LabelInfo(int(v), f"label {int(v)}") for v in np.unique(labels) if v]
    info = {"bundle": str(bundle), "name": metadata.get("name", bundle.name), "device": str(device),
            "inferer": inferer, "seconds": round(time.perf_counter() - start, 3)}
    return InferenceResult(labels=labels, geometry=reference, segments=segments, info=info)
