"""Starting points for fine-tuning: a MONAI bundle or a TorchScript model with a model card.

:func:`load_initial_model` reads either kind into an :class:`InitialModel` (network, labels,
spacing in mm, ROI in voxels, normalisation, axis handling). The network is a rebuilt MONAI
module whenever that is possible — a bundle's ``network_def`` with ``models/model.pt``, or a
card that names its architecture (``"network_def": {"_target_": "monai.networks.nets.SegResNet",
...}`` or ``"architecture": {"name": "SegResNet", "args": {...}}``) whose parameters the
TorchScript module's ``state_dict`` fills — and otherwise the TorchScript module itself (its
parameters are trainable; it is exported again as TorchScript).

:func:`adapt_to_labels` fits the network to another label set: rows of the output layer that
belong to kept classes (see :func:`class_mapping`) are copied; a new class starts as
background's row with a random direction added and its bias lowered by 2 (see
:func:`_copy_rows`), so the adapted network first predicts almost what the old one did and new
classes grow from there. For a rebuilt network every layer whose shape still fits is kept; for
a bare TorchScript module the final output convolution is located (the last 3-D convolution
whose output channels equal the class count and whose replacement changes the network's output
channels on a probe input) and its weight/bias are replaced; when no such layer is found, a
``ValueError`` says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from MedAISegLib.inference.export import build_network, load_bundle_network


@dataclass
class InitialModel:
    """A model to fine-tune from; ``definition`` is None for a bare TorchScript module."""

    network: torch.nn.Module
    definition: dict | None
    labels: dict
    out_channels: int
    in_channels: int
    spacing_mm: tuple | None
    roi: tuple
    normalization: dict = field(default_factory=lambda: {"type": "zscore"})
    axcodes: str | None = "RAS"
    source: str = ""

    @property
    def scripted(self) -> bool:
        """True when the network is a TorchScript module (exported again as ``model.ts``)."""
        return isinstance(self.network, torch.jit.ScriptModule)


def _card_definition(raw: dict, in_channels: int, out_channels: int) -> dict | None:
    if isinstance(raw.get("network_def"), dict) and "_target_" in raw["network_def"]:
        return dict(raw["network_def"])
    arch = raw.get("architecture")
    if isinstance(arch, dict) and arch.get("name"):
        target = arch["name"] if "." in arch["name"] else f"monai.networks.nets.{arch['name']}"
        args = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels, **arch.get("args", {})}
        return {"_target_": target, **args}
    return None


def _load_card_model(path: Path) -> InitialModel:
    from MedAISegLib.inference.model_card import ModelCard, find_card
    from MedAISegLib.inference.torchscript_model import load_torchscript

    card_path = find_card(path)
    if card_path is None:
        raise ValueError(
            f"No model card found for {path}; put {path.name}.json or model_card.json beside it "
            "(labels, spacing, normalisation, ROI) before fine-tuning it."
        )
    card = ModelCard.load(card_path)
    if card.activation != "softmax":
        raise ValueError(
            f"{path}: only softmax models (background channel 0) can be fine-tuned; the card says "
            f"activation {card.activation!r}."
        )
    scripted = load_torchscript(path, "cpu")
    labels = {int(label.value): label.name for label in card.labels}
    common = {
        "labels": labels,
        "out_channels": card.classes,
        "in_channels": card.channels,
        "spacing_mm": tuple(card.spacing_mm) if card.spacing_mm else None,
        "roi": tuple(card.roi_size),
        "normalization": dict(card.normalization),
        "axcodes": None if card.axis_order == "ijk" else "RAS",
    }
    definition = _card_definition(json.loads(card_path.read_text()), card.channels, card.classes)
    if definition is not None:
        try:
            network = build_network(definition)
            network.load_state_dict(scripted.state_dict())
            return InitialModel(
                network, definition, source=f"torchscript rebuilt as {definition['_target_']}", **common
            )
        except Exception as error:  # noqa: BLE001 - any mismatch: fine-tune the scripted module instead
            source = f"torchscript (card architecture not usable: {str(error).splitlines()[0][:120]})"
    else:
        source = "torchscript"
    return InitialModel(scripted, None, source=source, **common)


def load_initial_model(path) -> InitialModel:
    """Read a bundle folder or a TorchScript file with card; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Model {path} not found; give a bundle folder or a TorchScript file with a model card.")
    if not path.is_dir():
        return _load_card_model(path)
    network, definition, metadata = load_bundle_network(path)
    outputs = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    inputs = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    channel_def = outputs.get("channel_def") or {}
    labels = {int(k): str(v) for k, v in channel_def.items() if int(k) != 0}
    out_channels = int((definition or {}).get("out_channels") or outputs.get("num_channels") or max(labels) + 1)
    in_channels = int((definition or {}).get("in_channels") or inputs.get("num_channels") or 1)
    medai = metadata.get("medai")
    if medai:
        spacing, roi, axcodes = medai.get("spacing_mm"), medai.get("roi"), medai.get("axcodes", "RAS")
        normalization = medai.get("normalization_spec") or {"type": medai.get("normalization", "zscore")}
        source = "bundle"
    else:  # a bundle MedAI did not write (MONAI zoo): read its own preprocessing and inferer
        spacing, roi, axcodes, normalization = bundle_settings(path)
        source = "bundle (settings from its preprocessing)"
    roi = roi or inputs.get("spatial_shape") or [96, 96, 96]
    return InitialModel(
        network,
        definition,
        labels or {1: "label 1"},
        out_channels,
        in_channels,
        tuple(float(v) for v in spacing) if spacing is not None else None,
        tuple(int(r) for r in roi),
        dict(normalization),
        axcodes,
        source=source,
    )


def bundle_settings(bundle) -> tuple:
    """(spacing mm | None, ROI | None, axcodes | None, normalisation spec) read from a trusted bundle's
    parsed ``preprocessing`` (``Orientationd``, ``Spacingd``, ``ScaleIntensityRanged`` (window),
    ``NormalizeIntensityd`` (z-score), ``ScaleIntensityRangePercentilesd``) and ``SlidingWindowInferer``,
    so that fine-tuning feeds the network what its bundle fed it. Other transforms are not carried over."""
    from monai import transforms as T
    from monai.bundle import ConfigParser

    from MedAISegLib.inference.export import bundle_preprocessing

    spacing, axcodes = None, None
    normalization: dict[str, object] = {"type": "none"}
    compose = bundle_preprocessing(bundle)
    for transform in getattr(compose, "transforms", [compose]):
        if isinstance(transform, T.Orientationd):
            axcodes = transform.ornt_transform.axcodes
        elif isinstance(transform, T.Spacingd):
            spacing = [float(v) for v in np.atleast_1d(transform.spacing_transform.pixdim)]
        elif isinstance(transform, T.ScaleIntensityRanged):
            scaler = transform.scaler
            normalization = {
                "type": "window",
                "a_min": float(scaler.a_min),
                "a_max": float(scaler.a_max),
                "b_min": float(scaler.b_min),
                "b_max": float(scaler.b_max),
                "clip": bool(scaler.clip),
            }
        elif isinstance(transform, T.NormalizeIntensityd):
            normalization = {"type": "zscore", "nonzero": bool(transform.normalizer.nonzero)}
        elif isinstance(transform, T.ScaleIntensityRangePercentilesd):
            normalization = {
                "type": "percentile",
                "lower": float(transform.scaler.lower),
                "upper": float(transform.scaler.upper),
            }
    roi = None
    parser = ConfigParser()
    parser.read_config(str(Path(bundle) / "configs" / "inference.json"))
    if "inferer" in parser:
        parser["bundle_root"] = str(bundle)
        roi = getattr(parser.get_parsed_content("inferer"), "roi_size", None)
    if spacing is not None and len(spacing) == 1:
        spacing = spacing * 3
    return spacing, [int(r) for r in roi] if roi is not None else None, axcodes, normalization


def class_mapping(old_labels: dict, new_labels: dict) -> dict:
    """{new channel: old channel} for the classes that carry over: background always, then a new
    label with the name of an old one (case-insensitive), then a new label whose value is an old
    class that no name claimed (a renamed class)."""
    by_name = {name.lower(): int(value) for value, name in old_labels.items()}
    mapping = {0: 0}
    for value, name in new_labels.items():
        if name.lower() in by_name:
            mapping[int(value)] = by_name[name.lower()]
    claimed = set(mapping.values())
    for value in new_labels:
        if int(value) not in mapping and int(value) in old_labels and int(value) not in claimed:
            mapping[int(value)] = int(value)
    return mapping


def _output_axis(old: torch.Tensor, new: torch.Tensor, old_classes: int, new_classes: int) -> int | None:
    if old.dim() != new.dim():
        return None
    differing = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
    if len(differing) == 1 and old.shape[differing[0]] == old_classes and new.shape[differing[0]] == new_classes:
        return differing[0]
    return None


NEW_CLASS_BIAS = -2.0


def _copy_rows(old: torch.Tensor, new: torch.Tensor, axis: int, mapping: dict, bias: bool = False) -> torch.Tensor:
    """Rows of kept classes from ``old``; a new class starts as an unlikely variant of background:
    background's row plus a random direction (uniform, ±1/sqrt(fan-in), like PyTorch's default
    init) on weights and :data:`NEW_CLASS_BIAS` on a bias. A near-exact copy would learn very slowly
    (the softmax only passes gradient to the features along w_new - w_background); a fully random
    row outvotes kept classes, which training then does not recover."""
    out = new.detach().clone()
    old = old.detach()
    for index in range(out.shape[axis]):
        source = mapping.get(index)
        if source is not None and source < old.shape[axis]:
            out.select(axis, index).copy_(old.select(axis, source))
            continue
        row = old.select(axis, 0).clone()
        if bias:
            row += NEW_CLASS_BIAS
        elif row.numel() > 1:  # a random direction (PyTorch's default conv init), so gradients reach the features
            bound = 1.0 / math.sqrt(row.numel())  # fan-in of one output channel
            row += torch.empty_like(row).uniform_(-bound, bound)
        out.select(axis, index).copy_(row)
    return out


def _adapt_rebuilt(initial: InitialModel, out_channels: int, mapping: dict) -> tuple[torch.nn.Module, dict]:
    definition = {**initial.definition, "out_channels": out_channels}
    network = build_network(definition)
    own = network.state_dict()
    for key, value in initial.network.state_dict().items():
        if key not in own:
            continue
        if own[key].shape == value.shape:
            own[key] = value
            continue
        axis = _output_axis(value, own[key], initial.out_channels, out_channels)
        if axis is not None:
            own[key] = _copy_rows(value, own[key], axis, mapping, bias=key.endswith("bias"))
    network.load_state_dict(own)
    return network, definition


def _new_parameter(old: torch.Tensor, axis: int, out_channels: int, mapping: dict, bias: bool) -> torch.nn.Parameter:
    shape = list(old.shape)
    shape[axis] = out_channels
    return torch.nn.Parameter(_copy_rows(old, torch.empty(shape, dtype=old.dtype), axis, mapping, bias=bias))


def _adapt_scripted(initial: InitialModel, out_channels: int, mapping: dict, roi) -> torch.nn.Module:
    network = initial.network
    candidates = []
    for name, module in network.named_modules():
        kind = getattr(module, "original_name", type(module).__name__)
        weight = getattr(module, "weight", None) if kind in ("Conv3d", "ConvTranspose3d") else None
        if isinstance(weight, torch.Tensor) and weight.dim() == 5:
            axis = 1 if kind == "ConvTranspose3d" else 0
            if weight.shape[axis] == initial.out_channels:
                candidates.append((name, module, axis))
    probe = torch.zeros((1, initial.in_channels, *[int(r) for r in roi]))
    for _name, module, axis in reversed(candidates):
        old_weight, old_bias = module.weight, getattr(module, "bias", None)
        module.weight = _new_parameter(old_weight, axis, out_channels, mapping, bias=False)
        if isinstance(old_bias, torch.Tensor):
            module.bias = _new_parameter(old_bias, 0, out_channels, mapping, bias=True)
        try:
            with torch.no_grad():
                channels = network.eval()(probe).shape[1]
        except RuntimeError:
            channels = None
        if channels == out_channels:
            return network
        module.weight = old_weight
        if isinstance(old_bias, torch.Tensor):
            module.bias = old_bias
    raise ValueError(
        f"The TorchScript model has {initial.out_channels} output channels and no final output "
        f"convolution could be replaced to give {out_channels}; fine-tune it with its own label set "
        "or name its MONAI architecture in the model card ('network_def' or 'architecture') so it "
        "can be rebuilt."
    )


def adapt_to_labels(initial: InitialModel, new_labels: dict, roi=None) -> tuple[torch.nn.Module, dict | None]:
    """(network, definition) with ``max(new_labels) + 1`` output channels; see the module docstring.

    ``new_labels``: {value: name} without background. The same channel count keeps the network as
    it is. ``roi``: probe size (voxels) used to check a replaced TorchScript output layer.
    ``initial`` is updated to describe the adapted model, so adapting twice is harmless.
    """
    out_channels = max(int(v) for v in new_labels) + 1
    if out_channels == initial.out_channels:
        return initial.network, initial.definition
    mapping = class_mapping(initial.labels, new_labels)
    if initial.definition is not None:
        network, definition = _adapt_rebuilt(initial, out_channels, mapping)
    else:
        network, definition = _adapt_scripted(initial, out_channels, mapping, roi or initial.roi), None
    # ``initial`` now describes the adapted model (a TorchScript module is changed in place anyway)
    initial.network, initial.definition, initial.out_channels = network, definition, out_channels
    initial.labels = {int(k): str(v) for k, v in new_labels.items()}
    return network, definition
