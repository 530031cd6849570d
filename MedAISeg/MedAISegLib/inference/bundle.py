"""Run a MONAI Model Zoo bundle unchanged through ``monai.bundle.ConfigParser``.

Layout (e.g. ``spleen_ct_segmentation``): ``configs/metadata.json``, ``configs/inference.json``
(or ``.yaml``) with ``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing``, and
``models/model.pt`` (a state dict, loaded with ``torch.load(weights_only=True)``) or
``models/model.ts`` (TorchScript). The input volume(s) are written to a temporary NIfTI file so
that the bundle's own ``LoadImaged`` reads them exactly as it would read a user's file.

Security: bundle configs can execute Python, so :func:`run_bundle` first reads the weights (data
only), then refuses a bundle that :mod:`.bundle_trust` does not list as trusted with its current
config digest, and only then parses the configs.

Two ways to infer, chosen per run:

- the bundle's own path: its preprocessing, its inferer and its postprocessing as configured
  (``SaveImaged`` skipped, the result stays in memory);
- MedAI's path, used when flip test-time augmentation, probabilities or entropy are asked for,
  when ``inferer="medai"``, when the memory guard finds that the bundle's own path would not
  fit, or when the bundle's own inferer runs out of memory (then MedAI's halves the batch and
  stitches on the CPU): the bundle's preprocessing, then :func:`~.sliding_window.sliding_window_inference` with the
  bundle inferer's ``roi_size``, ``overlap``, ``sw_batch_size`` and blending mode (a
  ``SimpleInferer`` = one window over the whole image), batch and CPU stitching from the memory
  guard, then softmax (sigmoid when the bundle's ``Activationsd`` says so) and argmax in uint8,
  which is what a segmentation bundle's postprocessing does.

Either way the prediction is mapped onto the first input's exact grid through the affine of the
bundle's working grid (nearest neighbour for labels, linear for probabilities and entropy), so
bundles that resample or reorient land on the right voxels.
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

from MedAISegLib.inference.bundle_trust import require_trusted
from MedAISegLib.inference.memory_guard import choose_setting, estimate_memory, free_memory
from MedAISegLib.inference.model_card import LabelInfo
from MedAISegLib.inference.model_checks import explain_channel_error, load_state_dict_file, load_torchscript_file, load_weights_into
from MedAISegLib.inference.sliding_window import is_out_of_memory, sliding_window_inference
from MedAISegLib.inference.torchscript_model import InferenceResult, probabilities_by_label


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
    """``configs/metadata.json`` of a bundle ({} when absent; plain JSON, no code runs)."""
    path = Path(bundle) / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-download the bundle.") from error


def bundle_labels(metadata: dict) -> list[LabelInfo]:
    """Output classes from ``network_data_format.outputs.pred.channel_def`` (background dropped)."""
    channel_def = (metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def") or {})
    labels = [LabelInfo(int(k), str(v)) for k, v in channel_def.items()
              if int(k) != 0 and str(v).lower() != "background"]
    return sorted(labels, key=lambda item: item.value)


def expected_channels(metadata: dict) -> int | None:
    """``network_data_format.inputs.image.num_channels`` of the metadata, or None."""
    value = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("num_channels")
    return int(value) if isinstance(value, (int, float)) else None


def load_bundle_weights(bundle) -> tuple[str, object]:
    """``("pt", state dict)`` or ``("ts", TorchScript module)`` from ``models/`` (safe: data only)."""
    bundle = Path(bundle)
    pt, ts = bundle / "models" / "model.pt", bundle / "models" / "model.ts"
    if pt.exists():
        return "pt", load_state_dict_file(pt)
    if ts.exists():
        return "ts", load_torchscript_file(ts)
    raise ValueError(f"No weights in {bundle}/models: expected model.pt (with network_def) or model.ts.")


def _network(parser, bundle: Path, weights, device):
    kind, content = weights
    if kind == "pt":
        if "network_def" not in parser:
            ts = bundle / "models" / "model.ts"
            if not ts.exists():
                raise ValueError(f"{bundle}: models/model.pt needs a network_def in the inference config.")
            network = load_torchscript_file(ts)
        else:
            network = parser.get_parsed_content("network_def")
            load_weights_into(network, content, bundle / "models" / "model.pt")
    else:
        network = content
    return network.to(device).eval()


def _without_save(transform):
    from monai.transforms import Compose, SaveImage, SaveImaged

    if isinstance(transform, Compose):
        kept = [t for t in transform.transforms if not isinstance(t, (SaveImaged, SaveImage))]
        return Compose(kept, map_items=transform.map_items, unpack_items=transform.unpack_items)
    return transform


def _activation(postprocessing) -> str:
    """``sigmoid`` when the bundle's postprocessing applies a sigmoid, else ``softmax``."""
    from monai.transforms import Activationsd, Compose

    transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else [postprocessing]
    for transform in transforms:
        if isinstance(transform, Activationsd) and getattr(transform.converter, "sigmoid", False):
            return "sigmoid"
    return "softmax"


def _window_settings(inferer, spatial_shape) -> dict:
    """roi/overlap/batch/mode of a ``SlidingWindowInferer``; one whole-image window otherwise."""
    from monai.inferers import SlidingWindowInferer

    if isinstance(inferer, SlidingWindowInferer):
        roi = [int(r) if int(r) > 0 else int(n) for r, n in zip(inferer.roi_size, spatial_shape)]
        sigma = inferer.sigma_scale
        sigma = float(sigma[0] if isinstance(sigma, (list, tuple)) else sigma)
        return {"roi": roi, "overlap": float(np.atleast_1d(inferer.overlap)[0]), "batch": int(inferer.sw_batch_size),
                "mode": str(getattr(inferer.mode, "value", inferer.mode)), "sigma_scale": sigma}
    return {"roi": [int(n) for n in spatial_shape], "overlap": 0.0, "batch": 1, "mode": "constant",
            "sigma_scale": 0.125}


def _to_reference(array_kji: np.ndarray, geometry: Geometry, reference: Geometry, shape_xyz, labels: bool):
    """Resample a KJI array on ``geometry`` (RAS) onto ``reference``'s grid (no-op when the same)."""
    if geometry.same_grid(reference, tol_mm=1e-3):
        return array_kji
    image = sitk.GetImageFromArray(array_kji)
    geometry.apply_to_sitk(image)
    ref = sitk.Image([int(n) for n in shape_xyz], sitk.sitkUInt8)
    reference.apply_to_sitk(ref)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), interpolator, 0.0, image.GetPixelID()))


def voxels_coincide(geometry: Geometry, reference: Geometry, tol: float = 1e-3) -> bool:
    """True when every voxel centre of ``geometry`` is a voxel centre of ``reference`` (the grids differ
    only by an axis permutation/flip and a whole-voxel shift, e.g. after ``Orientationd``): labels then
    map across exactly by nearest neighbour, without resampling probabilities."""
    m = reference.to_space(geometry.space).physical_to_ijk() @ geometry.ijk_to_physical()
    rotation, shift = m[:3, :3], m[:3, 3]
    signed_permutation = np.allclose(rotation, np.rint(rotation), atol=tol) and \
        np.allclose(np.abs(np.rint(rotation)).sum(axis=0), 1) and np.allclose(np.abs(np.rint(rotation)).sum(axis=1), 1)
    return bool(signed_permutation and np.allclose(shift, np.rint(shift), atol=tol))


def memory_plan(shape, channels, classes, window, parameters, input_voxels, device, amp, memory, batch_size):
    """(the bundle's own path fits?, MedAI's setting) for a working grid ``shape`` (voxels), ``classes``
    output channels, ``window`` (:func:`_window_settings`), ``input_voxels`` of the original grid and
    ``memory`` = (free device bytes, free host bytes) or None to measure. The bundle's own path is
    assumed to keep its batch, blend on the device and invert full float maps at input resolution."""
    device_free, host_free = memory if memory is not None else free_memory(device)
    own = estimate_memory(shape, channels, classes, window["roi"], window["batch"], parameters, False, False)
    own_host = own.host_bytes + classes * input_voxels * 4  # the bundle inverts full float maps
    own_fits = (device_free is None or own.device_bytes <= device_free) and (host_free is None or own_host <= host_free)
    setting = choose_setting(shape, channels, classes, window["roi"], device_free, host_free,
                             batch_size or window["batch"], parameters, amp and device.type == "cuda")
    return own_fits, setting


def run_bundle(bundle, images: list[sitk.Image], device="cpu", inferer: str = "bundle", amp: bool = True,
               tta_flips: bool = False, return_probabilities: bool = False, return_entropy: bool = False,
               batch_size: int | None = None, memory: tuple[int | None, int | None] | None = None,
               weights: tuple[str, object] | None = None, progress=None) -> InferenceResult:
    """Segment ``images`` (SimpleITK, LPS; several = channels as the bundle's ``image`` key expects)
    with the trusted bundle at ``bundle``; labels come back on ``images[0]``'s grid (RAS geometry).

    ``inferer``: ``bundle`` (its own inferer unless TTA/probabilities/entropy or the memory guard need
    MedAI's) or ``medai`` (always MedAI's sliding window). ``memory``: (free device bytes, free host
    bytes) overriding the measured figures (None = unknown). ``batch_size``: MedAI path's starting
    batch (default: the bundle's ``sw_batch_size``). ``weights``: what :func:`load_bundle_weights`
    returned for this bundle when the caller already read them. Raises ``ValueError`` when the bundle
    is not trusted, its weights are corrupt, the channel count is wrong, or nothing fits in memory.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    config = _inference_config(bundle)
    metadata = bundle_metadata(bundle)
    name = metadata.get("name", bundle.name)
    _check_channel_count(metadata, name, len(images))
    weights = weights or load_bundle_weights(bundle)  # data only: checked before any config code may run
    trust = require_trusted(bundle)
    device = torch.device(device)
    start = time.perf_counter()
    reference = Geometry.from_sitk(images[0]).to_space("RAS")
    with tempfile.TemporaryDirectory(prefix="medai-bundle-") as tmp:
        parser, paths = _parser_and_inputs(ConfigParser(), config, bundle, tmp, device, images)
        if progress:
            progress(0.1)
        network = _network(parser, bundle, weights, device)
        preprocessing, bundle_inferer, postprocessing = _bundle_transforms(parser)
        data = preprocessing({"image": paths[0] if len(paths) == 1 else paths})
        if progress:
            progress(0.3)
        spatial = tuple(int(n) for n in data["image"].shape[1:])
        window = _window_settings(bundle_inferer, spatial)
        labels_meta = bundle_labels(metadata)
        classes = max(2, max((lab.value for lab in labels_meta), default=1) + 1)
        parameters = sum(p.numel() for p in network.parameters()) if hasattr(network, "parameters") else 0
        own_fits, setting = memory_plan(spatial, int(data["image"].shape[0]), classes, window, parameters,
                                         int(np.prod(images[0].GetSize())), device, amp, memory, batch_size)
        reasons = [r for r, on in (("asked", inferer == "medai"), ("flip TTA", tta_flips),
                                   ("probabilities", return_probabilities), ("entropy", return_entropy),
                                   ("memory guard", not own_fits)) if on]
        if reasons and not setting.fits:
            raise ValueError(f"Not enough memory for the bundle {name} on this volume. {setting.advice}")
        result, reasons = _infer(reasons, network, data, bundle_inferer, postprocessing, device, reference, images,
                                 name, window, setting, amp, tta_flips, return_probabilities, return_entropy, progress)
        if progress:
            progress(0.9)
    result.segments = labels_meta or [LabelInfo(int(v), f"label {int(v)}") for v in np.unique(result.labels) if v]
    result.info.update({"bundle": str(bundle), "name": name, "device": str(device),
                        "inferer": "medai" if reasons else "bundle", "medai_inferer_because": reasons,
                        "trust": {"origin": trust["origin"], "digest": trust["digest"]},
                        "roi_size": window["roi"], "overlap": window["overlap"],
                        "seconds": round(time.perf_counter() - start, 3)})
    return result


def _check_channel_count(metadata: dict, name: str, given: int) -> None:
    """``ValueError`` when the bundle's metadata asks for another number of input channels than ``given``."""
    wanted = expected_channels(metadata)
    if wanted is not None and wanted != given:
        raise ValueError(f"The model {name} expects {wanted} input channel(s) (configs/metadata.json) but was given "
                         f"{given}; select {wanted} input volume(s).")


def _parser_and_inputs(parser, config: Path, bundle: Path, tmp: str, device, images: list[sitk.Image]):
    """``parser`` (a new ``ConfigParser``) reading the bundle's inference config, with the bundle root, the
    output folder ``tmp`` and the device set, and the paths of ``images`` written to ``tmp`` as NIfTI for
    the bundle's own ``LoadImaged``."""
    parser.read_config(str(config))
    parser["bundle_root"] = str(bundle)
    parser["output_dir"] = tmp
    parser["device"] = f"$torch.device('{device}')"
    paths = []
    for index, image in enumerate(images):
        path = Path(tmp) / f"input_{index}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(str(path))
    return parser, paths


def _bundle_transforms(parser):
    """The bundle's ``preprocessing``, ``inferer`` and ``postprocessing`` (without saving; None when absent)."""
    preprocessing = parser.get_parsed_content("preprocessing")
    bundle_inferer = parser.get_parsed_content("inferer")
    postprocessing = _without_save(parser.get_parsed_content("postprocessing")) if "postprocessing" in parser \
        else None
    return preprocessing, bundle_inferer, postprocessing


def _infer(reasons: list[str], network, data, bundle_inferer, postprocessing, device, reference, images, name,
           window, setting, amp, tta_flips, return_probabilities, return_entropy, progress):
    """``(result, reasons)``: the bundle's own path when no ``reasons`` ask for MedAI's, else (or when the own
    inferer runs out of memory, which becomes the reason) MedAI's path; a wrong channel count is explained."""
    try:
        if not reasons:
            try:
                return _run_own(network, data, bundle_inferer, postprocessing, device, reference,
                                images[0].GetSize()), reasons
            except (RuntimeError, torch.jit.Error) as error:  # out of memory in the bundle's inferer: MedAI's path retries
                if not is_out_of_memory(error):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                reasons = ["out of memory in the bundle's inferer"]
        return _run_medai(network, data, window, setting, device, amp, tta_flips, postprocessing,
                          return_probabilities, return_entropy, reference, images[0].GetSize(), progress), reasons
    except RuntimeError as error:
        explained = explain_channel_error(error, len(images), name)
        if explained is not None:
            raise explained from error
        raise


def _run_own(network, data, bundle_inferer, postprocessing, device, reference, size_xyz) -> InferenceResult:
    with torch.no_grad():
        pred = bundle_inferer(data["image"][None].to(device), network)
    data["pred"] = pred[0].detach().cpu() if hasattr(pred[0], "detach") else pred[0]
    data["image"] = data["image"].cpu() if hasattr(data["image"], "cpu") else data["image"]
    if postprocessing is not None:
        data = postprocessing(data)
    pred = data["pred"]
    array = pred.detach().cpu().numpy() if hasattr(pred, "detach") else np.asarray(pred)
    affine = np.asarray(pred.affine) if hasattr(pred, "affine") else None
    if array.ndim == 4:
        array = array[0] if array.shape[0] == 1 else np.argmax(array, axis=0)
    labels = np.ascontiguousarray(np.rint(array).astype(np.uint8).transpose(2, 1, 0))
    if affine is not None:
        labels = _to_reference(labels, Geometry.from_ijk_to_physical(affine, "RAS", labels.shape), reference,
                               size_xyz, labels=True)
    elif labels.shape != reference.shape_kji:
        raise ValueError("The bundle's output has no affine and another shape than the input; cannot map it back.")
    return InferenceResult(labels=labels, geometry=reference, segments=[])


def _run_medai(network, data, window, setting, device, amp, tta_flips, postprocessing, return_probabilities,
               return_entropy, reference, size_xyz, progress) -> InferenceResult:
    image = data["image"]
    affine = np.asarray(image.affine) if hasattr(image, "affine") else None
    tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    shape_kji = tuple(int(n) for n in tensor.shape[1:][::-1])
    if affine is None and shape_kji != tuple(reference.shape_kji):
        raise ValueError("The bundle's preprocessing lost the image affine; cannot map the result back.")
    geometry = Geometry.from_ijk_to_physical(affine, "RAS", shape_kji) if affine is not None else reference
    same_grid = geometry.same_grid(reference, tol_mm=1e-3) or voxels_coincide(geometry, reference)
    activation = _activation(postprocessing) if postprocessing is not None else "softmax"
    result = sliding_window_inference(network, tensor.float().cpu(), window["roi"], overlap=window["overlap"],
                                      batch_size=setting.batch_size, device=device, amp=amp, mode=window["mode"],
                                      sigma_scale=window["sigma_scale"], tta_flips=tta_flips, activation=activation,
                                      return_probabilities=return_probabilities or not same_grid,
                                      return_entropy=return_entropy, cpu_stitching=setting.cpu_stitching,
                                      progress=(lambda f: progress(0.3 + 0.6 * f)) if progress else None)

    def back(array_ijk, labels):
        return _to_reference(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)), geometry, reference, size_xyz, labels)

    out = InferenceResult(labels=result.labels, geometry=reference, segments=[])
    by_label = probabilities_by_label(result.probabilities, activation) if result.probabilities is not None else None
    if same_grid:  # identical, or a permutation/flip of the voxels: exact by nearest neighbour
        out.labels = back(result.labels, True)
    else:  # like Invertd (linear) + AsDiscreted(argmax): argmax of the resampled maps, one class at a time
        best = labels = None
        for value, channel in enumerate(by_label):
            mapped = back(channel, False)
            if best is None:
                best, labels = mapped, np.zeros(mapped.shape, np.uint8)
            else:
                better = mapped > best
                best = np.where(better, mapped, best)
                labels[better] = value
        out.labels = labels
    if return_probabilities:
        out.probabilities = np.stack([back(p, False) for p in by_label])
    if result.entropy is not None:
        out.entropy = back(result.entropy, False)
    out.info = {"batch_size": result.batch_size, "cpu_stitching": result.stitched_on_cpu, "windows": result.windows,
                "tta_flips": tta_flips, "working_shape_kji": list(shape_kji),
                "memory_estimate_bytes": {"device": setting.device_bytes, "host": setting.host_bytes}}
    return out
