"""MONAI bundle export of a trained network, and compressed exports (fp16 TorchScript, ONNX).

The bundle is the one :mod:`.bundle` runs: ``configs/inference.json`` (``network_def``, the same
preprocessing the training used — ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd(RAS)``,
``Spacingd`` to the training spacing (mm), z-score ``NormalizeIntensityd`` — a
``SlidingWindowInferer`` with the training ROI and softmax/``Invertd``/argmax postprocessing),
``configs/metadata.json`` (labels in ``network_data_format.outputs.pred.channel_def``, spacing,
normalisation, training figures) and ``models/model.pt`` (a plain state dict, loadable with
``torch.load(weights_only=True)``). Compressed exports go next to it as ``models/model_fp16.ts``
and ``models/model.onnx`` and are each compared with the fp32 network (label agreement over the
voxels of sample volumes) and timed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from MedAISegLib.inference.sliding_window import sliding_window_inference

NETWORKS = ("segresnet", "unet", "dynunet", "swinunetr")


def network_definition(name: str, in_channels: int, out_channels: int, features: int = 16) -> dict:
    """MONAI config (``_target_`` form) of network ``name`` (segresnet|unet|dynunet|swinunetr).

    ``features``: channels of the first level (doubles at each of the levels below).
    """
    name = name.lower()
    common = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels}
    if name == "segresnet":
        return {"_target_": "monai.networks.nets.SegResNet", **common, "init_filters": features,
                "blocks_down": [1, 2, 2], "blocks_up": [1, 1], "dropout_prob": 0.0,
                "norm": ["GROUP", {"num_groups": min(8, features)}]}
    if name == "unet":
        return {"_target_": "monai.networks.nets.UNet", **common,
                "channels": [features, 2 * features, 4 * features, 8 * features], "strides": [2, 2, 2],
                "num_res_units": 1, "norm": "INSTANCE"}
    if name == "dynunet":
        return {"_target_": "monai.networks.nets.DynUNet", **common, "kernel_size": [3, 3, 3, 3],
                "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2],
                "filters": [features, 2 * features, 4 * features, 8 * features], "norm_name": "instance"}
    if name == "swinunetr":  # group norm: the 1-voxel bottleneck of a 32-voxel ROI breaks instance/batch norm
        return {"_target_": "monai.networks.nets.SwinUNETR", **common, "feature_size": max(12, features // 12 * 12),
                "norm_name": ["group", {"num_groups": 3}]}
    raise ValueError(f"Unknown network {name!r}; choose one of {', '.join(NETWORKS)}.")


def roi_multiple(definition: dict) -> int:
    """The number each ROI size (voxels) must be a multiple of for this network config."""
    target = str(definition.get("_target_", "")).rsplit(".", 1)[-1]
    if target == "SwinUNETR":
        return 32
    if target in ("UNet", "DynUNet"):
        return int(np.prod([int(s) if not isinstance(s, list) else int(s[0]) for s in definition.get("strides", [])]))
    if target == "SegResNet":
        return 2 ** (len(definition.get("blocks_down", [1, 2, 2, 4])) - 1)
    return 1


def check_roi(definition: dict, roi) -> None:
    """``ValueError`` naming the network and the valid sizes when ``roi`` does not fit ``definition``."""
    multiple = roi_multiple(definition)
    if any(int(r) % multiple or int(r) < multiple for r in roi):
        name = str(definition.get("_target_", "the network")).rsplit(".", 1)[-1]
        raise ValueError(f"{name} needs a patch size (ROI) that is a multiple of {multiple} voxels in each axis, got "
                         f"{[int(r) for r in roi]}; e.g. {[max(multiple, int(r) // multiple * multiple) for r in roi]}.")
    if definition.get("_target_", "").endswith("SwinUNETR"):
        import importlib.util

        if importlib.util.find_spec("einops") is None:
            raise ValueError("SwinUNETR needs the Python package 'einops'; install it (pip install einops) or choose "
                             "another network.")


def build_network(definition: dict) -> torch.nn.Module:
    """Instantiate a ``_target_`` network config (as the bundle's ConfigParser does)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": definition})
    return parser.get_parsed_content("network_def")


def normalization_transform(spec: dict | str | None) -> dict | None:
    """MONAI transform config of a model card's ``normalization`` (None for ``none``)."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec or {"type": "zscore"})
    kind = spec.get("type", "zscore")
    if kind == "none":
        return None
    if kind == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": bool(spec.get("nonzero", False)),
                "channel_wise": True}
    if kind == "window":
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(spec["a_min"]),
                "a_max": float(spec["a_max"]), "b_min": float(spec.get("b_min", 0.0)),
                "b_max": float(spec.get("b_max", 1.0)), "clip": bool(spec.get("clip", True))}
    if kind == "percentile":
        return {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": float(spec.get("lower", 0.5)),
                "upper": float(spec.get("upper", 99.5)), "b_min": 0.0, "b_max": 1.0, "clip": True}
    raise ValueError(f"Unknown normalisation {kind!r}; use none, zscore, window or percentile.")


def preprocessing_definition(spacing_mm, keys=("image",), normalization=None, axcodes: str | None = "RAS") -> list[dict]:
    """Transforms shared by training and the exported bundle (label keys use nearest interpolation).

    ``spacing_mm`` None keeps each input's own grid; ``axcodes`` None keeps the file's voxel axes
    (a model card's ``ijk`` order); ``normalization``: a model card spec (default z-score).
    """
    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    steps = [{"_target_": "LoadImaged", "keys": keys, "image_only": True},
             {"_target_": "EnsureChannelFirstd", "keys": keys}]
    if axcodes:
        steps.append({"_target_": "Orientationd", "keys": keys, "axcodes": axcodes})
    if spacing_mm is not None:
        steps.append({"_target_": "Spacingd", "keys": keys, "pixdim": [float(s) for s in spacing_mm], "mode": modes})
    norm = normalization_transform(normalization)
    if norm is not None:
        steps.append(norm)
    steps.append({"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32"})
    return steps


def build_transforms(definitions: list[dict]):
    """A MONAI ``Compose`` from transform configs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"t": {"_target_": "Compose", "transforms": definitions}})
    return parser.get_parsed_content("t")


def export_bundle(folder, network: torch.nn.Module, definition: dict | None, labels: dict, spacing_mm, roi,
                  name: str = "MedAI trained model", training: dict | None = None, normalization=None,
                  axcodes: str | None = "RAS", in_channels: int = 1, trust: bool = True) -> Path:
    """Write a MONAI bundle at ``folder``; ``labels``: {value: name} without background.

    With a ``definition`` (MONAI ``_target_`` config) the weights go to ``models/model.pt`` (state
    dict); without one ``network`` must be TorchScript and is saved as ``models/model.ts``. Weight
    files of the other kind and compressed exports left from an earlier export are removed (they
    would no longer match). ``normalization`` / ``axcodes``: see :func:`preprocessing_definition`.
    ``trust``: record the configs just written in the user's bundle trust store (:mod:`.bundle_trust`,
    origin ``trained``), so that MedAI runs the bundle it made — only when the folder holds no other
    code file (another config, a ``*.py``), which the user must then check and trust themselves.
    """
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    normalization = {"type": normalization} if isinstance(normalization, str) else \
        dict(normalization or {"type": "zscore"})
    out_channels = int(definition["out_channels"]) if definition else max(int(k) for k in labels) + 1
    in_channels = int(definition["in_channels"]) if definition else int(in_channels)
    config = _inference_config(definition, spacing_mm, normalization, axcodes, roi)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    metadata = _bundle_metadata(name, labels, spacing_mm, roi, normalization, axcodes, in_channels, out_channels,
                                training)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    _save_weights(folder / "models", network, definition)
    if trust:
        from MedAISegLib.inference.bundle_trust import code_files, record_trust

        written = {folder / "configs" / "inference.json", folder / "configs" / "metadata.json"}
        if set(code_files(folder)) == written:  # nothing foreign (other configs, *.py) would be trusted too
            record_trust(folder, origin="trained", source="MedAI export")
    return folder


def _inference_config(definition: dict | None, spacing_mm, normalization: dict, axcodes, roi) -> dict:
    """configs/inference.json: preprocessing, MONAI's sliding-window inferer and the postprocessing."""
    config = {
        "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "preprocessing": {"_target_": "Compose",
                          "transforms": preprocessing_definition(spacing_mm, normalization=normalization,
                                                                 axcodes=axcodes)},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(r) for r in roi], "sw_batch_size": 4,
                    "overlap": 0.25, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg"}]},
    }
    return {"network_def": definition, **config} if definition else config


def _bundle_metadata(name: str, labels: dict, spacing_mm, roi, normalization: dict, axcodes, in_channels: int,
                     out_channels: int, training: dict | None) -> dict:
    """configs/metadata.json: MONAI's network data format plus MedAI's own preprocessing record."""
    channel_def = {"0": "background", **{str(int(k)): str(v) for k, v in sorted(labels.items())}}
    spacing = [float(s) for s in spacing_mm] if spacing_mm is not None else None
    return {
        "name": name, "version": "0.1.0", "task": "segmentation", "monai_version": _monai_version(),
        "pytorch_version": torch.__version__.split("+")[0],
        "description": "Trained in MedAI (medai train).",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": in_channels,
                                 "spatial_shape": [int(r) for r in roi], "format": "magnitude",
                                 "pixdim": spacing, "normalization": normalization.get("type", "zscore")}},
            "outputs": {"pred": {"type": "image", "num_channels": out_channels,
                                 "format": "segmentation", "channel_def": channel_def}}},
        "medai": {"spacing_mm": spacing, "roi": [int(r) for r in roi],
                  "normalization": normalization.get("type", "zscore"), "normalization_spec": normalization,
                  "axcodes": axcodes, "training": training or {}},
    }


def _save_weights(models: Path, network: torch.nn.Module, definition: dict | None) -> None:
    """The state dict as models/model.pt (with a definition) or the TorchScript as models/model.ts; weight
    files left from an earlier export are removed first."""
    for stale in ("model.pt", "model.ts", "model.onnx", "model_fp16.ts"):
        (models / stale).unlink(missing_ok=True)
    if definition:
        state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                 for k, v in network.state_dict().items()}
        torch.save(state, models / "model.pt")
    else:
        if not isinstance(network, torch.jit.ScriptModule):
            raise ValueError("A network without a MONAI definition must be TorchScript to be exported.")
        torch.jit.save(network.cpu().float().eval(), str(models / "model.ts"))


def _monai_version() -> str:
    import monai

    return monai.__version__


def load_bundle_network(bundle) -> tuple[torch.nn.Module, dict | None, dict]:
    """(network, its ``network_def`` or None, metadata) of a trusted bundle (see :mod:`.bundle_trust`;
    ``ValueError`` otherwise): ``models/model.pt`` into the rebuilt ``network_def``, else the
    TorchScript ``models/model.ts``."""
    bundle = Path(bundle)
    config_path = bundle / "configs" / "inference.json"
    pt, ts = bundle / "models" / "model.pt", bundle / "models" / "model.ts"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    if config is None or not (pt.exists() or ts.exists()):
        raise ValueError(f"{bundle} is not a bundle with configs/inference.json and models/model.pt or model.ts; "
                         "give a bundle exported by medai train or a MONAI zoo bundle.")
    from MedAISegLib.inference.bundle_trust import require_trusted

    require_trusted(bundle)  # its network_def and configs are code; MedAI's own exports are trusted when written
    definition = config.get("network_def")
    if pt.exists() and definition:
        network = build_network(definition)
        state = torch.load(str(pt), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        network.load_state_dict(state)
    elif ts.exists():
        network, definition = torch.jit.load(str(ts), map_location="cpu"), None
    else:
        raise ValueError(f"{bundle} has models/model.pt but no network_def in configs/inference.json.")
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    return network, definition, metadata


def bundle_preprocessing(bundle):
    """The trusted bundle's own ``preprocessing`` (a MONAI ``Compose``) from ``configs/inference.json``."""
    from monai.bundle import ConfigParser

    from MedAISegLib.inference.bundle_trust import require_trusted

    require_trusted(bundle)  # parsing the config evaluates its expressions
    path = Path(bundle) / "configs" / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(path))
    if "preprocessing" not in parser:
        raise ValueError(f"{bundle} has no preprocessing in configs/inference.json.")
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("preprocessing")


class OnnxNetwork:
    """Callable running an ONNX file with onnxruntime on CPU, torch tensors in and out."""

    def __init__(self, path, threads: int | None = None):
        from MedAICommonLib.optional import require_packages

        require_packages(["onnxruntime"], "Running an ONNX export", "pip install 'medai[export]'")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: batch.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


class _Fp16Wrapper(torch.nn.Module):
    """fp16 weights inside, fp32 tensors at the interface."""

    def __init__(self, network):
        super().__init__()
        self.network = network.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def export_compressed(bundle, samples: list[torch.Tensor], fp16: bool = True, onnx: bool = True,
                      device="cpu", repeat: int = 1, threads: int | None = None) -> dict:
    """Write ``models/model_fp16.ts`` and/or ``models/model.onnx`` and compare them with fp32.

    ``samples``: preprocessed ``(C, X, Y, Z)`` volumes (as the bundle's preprocessing gives them);
    each export is run over them with the bundle's ROI and MedAI's sliding window, and its labels
    compared voxel by voxel with the fp32 network's (``agreement`` = equal voxels / all voxels).
    Times are the best of ``repeat`` runs (seconds, all samples). fp16 runs on ``device``; on a CPU
    torch computes fp16 convolutions slowly or not at all, which the report then says.
    """
    bundle = Path(bundle)
    network, definition, metadata = load_bundle_network(bundle)
    roi = metadata.get("medai", {}).get("roi") or \
        json.loads((bundle / "configs" / "inference.json").read_text())["inferer"]["roi_size"]
    device = torch.device(device)
    network = network.to(device).eval()
    reference, seconds = _run_all(network, samples, roi, device, repeat)
    report = {"fp32": {"seconds": seconds, "device": str(device)}}
    in_channels = int(definition["in_channels"]) if definition else \
        int(metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("num_channels", 1))
    example = torch.zeros((1, in_channels, *[int(r) for r in roi]))
    if fp16:
        path = bundle / "models" / "model_fp16.ts"
        entry = {"file": str(path), "device": str(device)}
        try:
            base = build_network(definition) if definition else load_bundle_network(bundle)[0]
            wrapped = _Fp16Wrapper(base).eval()
            wrapped.network.load_state_dict({k: v.half() if v.is_floating_point() else v
                                             for k, v in network.state_dict().items()})
            with torch.no_grad():
                traced = torch.jit.trace(wrapped.to(device), example.to(device), check_trace=False)
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path), map_location=device)
            labels, entry["seconds"] = _run_all(loaded, samples, roi, device, repeat)
            entry["agreement"] = _agreement(reference, labels)
            entry["speedup_vs_fp32"] = round(seconds / max(entry["seconds"], 1e-9), 3)
            entry["size_mb"] = round(path.stat().st_size / 1e6, 3)
        except (RuntimeError, NotImplementedError) as error:
            entry["error"] = f"fp16 not runnable on {device}: {str(error).splitlines()[0]}"
        report["fp16_torchscript"] = entry
    if onnx:
        path = bundle / "models" / "model.onnx"
        cpu_network = network.to("cpu")
        with torch.no_grad():
            torch.onnx.export(cpu_network, example, str(path), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
        runner = OnnxNetwork(path, threads=threads)
        labels, onnx_seconds = _run_all(runner, samples, roi, torch.device("cpu"), repeat)
        cpu_reference, cpu_seconds = (reference, seconds) if device.type == "cpu" else \
            _run_all(cpu_network, samples, roi, torch.device("cpu"), repeat)
        report["onnx"] = {"file": str(path), "device": "cpu (onnxruntime)", "seconds": onnx_seconds,
                          "fp32_cpu_seconds": cpu_seconds, "agreement": _agreement(cpu_reference, labels),
                          "speedup_vs_fp32": round(cpu_seconds / max(onnx_seconds, 1e-9), 3),
                          "size_mb": round(path.stat().st_size / 1e6, 3)}
        network.to(device)
    return report


def _run_all(network, samples, roi, device, repeat):
    best, labels = None, []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        labels = [sliding_window_inference(network, s, roi, overlap=0.25, batch_size=4, device=device,
                                           amp=False).labels for s in samples]
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return labels, round(best, 4)


def _agreement(reference: list[np.ndarray], labels: list[np.ndarray]) -> float:
    equal = sum(int(np.count_nonzero(a == b)) for a, b in zip(reference, labels))
    total = sum(a.size for a in reference)
    return round(equal / max(total, 1), 6)
