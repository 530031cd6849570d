"""Explanation maps of a segmentation network for one output class: Grad-CAM and gradient×input.

Both work on a preprocessed ``(C, X, Y, Z)`` image (the network's own axes and grid) tile by
tile, with the tiles, overlap (0.25) and Gaussian weighting of MedAI's sliding window, and
return an ``(X, Y, Z)`` float32 map on that grid scaled to [0, 1] (one scale for the whole
volume, so tiles with little evidence stay dim). The explained score of a tile is summed over
the voxels the network assigns to the class (Seg-Grad-CAM, Vinogradova et al. 2020); it is the
class's log-odds against the other classes (``z_c - logsumexp_{k != c} z_k``) rather than its raw
logit, because softmax outputs only fix logit differences: a raw logit can be negative inside
the segment, and the map then points outside it. Tiles where the class is not predicted add 0.

- ``gradcam``: a forward hook keeps the activations ``A`` of a feature layer (default: the last
  decoder features, see :func:`default_target_layer`; ``"name:input"`` takes a module's input)
  and a tensor hook their gradient; the channel
  weights are the spatial means of the gradient and the map is ``ReLU(sum_k w_k A_k)``, upsampled
  (trilinear) to the tile. Needs a Python (non-TorchScript) module.
- ``gradient``: |gradient × input| summed over the input channels (any differentiable module).
"""

from __future__ import annotations

import numpy as np
import torch

from MedAISegLib.inference.sliding_window import gaussian_importance, window_starts

METHODS = ("gradcam", "gradient")

_FEATURE_LAYERS = {"SegResNet": "conv_final.2:input", "DynUNet": "output_block:input", "SwinUNETR": "out:input",
                   "UNet": "model.2:input", "BasicUNet": "final_conv:input"}


def default_target_layer(network: torch.nn.Module) -> str:
    """The decoder's last feature maps, as the output layer reads them (``"<module>:input"``):
    after the last decoder block's normalisation and activation (MONAI SegResNet, DynUNet,
    SwinUNETR, UNet, BasicUNet); for other networks the input of the last top-level child.

    Not the raw output of a block followed by a normalisation (SegResNet's ``up_layers``): there
    the spatial mean of the gradient has no stable sign, and the map came out inverted (zero
    inside the segment) on some cases."""
    modules = dict(network.named_modules())
    for cls in type(network).__mro__:
        name = _FEATURE_LAYERS.get(cls.__name__)
        if name and name.split(":")[0] in modules:
            return name
    children = [name for name, _ in network.named_children()]
    if not children:
        raise ValueError(f"Cannot choose a feature layer in {type(network).__name__}; give layer= by name.")
    return f"{children[-1]}:input"


def _score(logits: torch.Tensor, class_index: int) -> torch.Tensor | None:
    """Summed log-odds of the class against the others, over the voxels predicted as the class."""
    mask = (logits.argmax(1) == class_index).float()
    if float(mask.sum()) == 0:
        return None
    others = torch.cat([logits[:, :class_index], logits[:, class_index + 1:]], 1)
    return ((logits[:, class_index] - torch.logsumexp(others, 1)) * mask).sum()


def _gradcam_tile(network, tile, class_index, layer_module):
    store = {}

    def keep_gradient(grad):
        store["gradient"] = grad

    def keep_activation(_module, _inputs, output):
        output = output[0] if isinstance(output, (tuple, list)) else output
        store["activation"] = output
        output.register_hook(keep_gradient)

    module, use_input = layer_module
    handle = module.register_forward_pre_hook(lambda m, inputs: keep_activation(m, inputs, inputs[0])) if use_input \
        else module.register_forward_hook(keep_activation)
    try:
        logits = network(tile)
    finally:
        handle.remove()
    score = _score(logits, class_index)
    if score is None:
        return None
    score.backward()
    activation, gradient = store["activation"].detach(), store["gradient"].detach()
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True))
    if cam.shape[2:] != tile.shape[2:]:
        cam = torch.nn.functional.interpolate(cam, size=tile.shape[2:], mode="trilinear", align_corners=False)
    return cam[0, 0]


def _gradient_tile(network, tile, class_index):
    tile = tile.clone().requires_grad_(True)
    score = _score(network(tile), class_index)
    if score is None:
        return None
    score.backward()
    return (tile.grad * tile).abs().sum(1)[0].detach()


def explanation_map(network: torch.nn.Module, image, class_index: int, roi, method: str = "gradcam",
                    layer: str | None = None, overlap: float = 0.25, device="cpu") -> np.ndarray:
    """Grad-CAM or gradient×input map of class ``class_index`` (see the module docstring).

    ``image``: preprocessed ``(C, X, Y, Z)`` tensor/array; ``roi``: tile size (voxels);
    ``layer``: feature layer for Grad-CAM: a ``dict(network.named_modules())`` key (its output) or
    ``"key:input"`` (its input); default :func:`default_target_layer`.
    Returns an ``(X, Y, Z)`` float32 array in [0, 1] on the image's grid.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; choose one of {', '.join(METHODS)}.")
    device = torch.device(device)
    network = network.to(device).eval()
    layer_module = None
    if method == "gradcam":
        if isinstance(network, torch.jit.ScriptModule):
            raise ValueError("Grad-CAM needs hooks, which a TorchScript model does not offer; use method "
                             "'gradient', or give the model card its MONAI architecture so it can be rebuilt.")
        modules = dict(network.named_modules())
        layer = layer or default_target_layer(network)
        name, _, part = layer.partition(":")
        if name not in modules or part not in ("", "input", "output"):
            raise ValueError(f"Layer {layer!r} is not in the network; give a module name, optionally with ':input', "
                             f"e.g. one of {list(modules)[1:12]}...")
        layer_module = (modules[name], part == "input")
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    roi = [int(r) for r in roi]
    spatial = list(image.shape[1:])
    padded_shape = [max(n, r) for n, r in zip(spatial, roi)]
    padded = torch.zeros((image.shape[0], *padded_shape))
    padded[:, :spatial[0], :spatial[1], :spatial[2]] = image
    total, weight = torch.zeros(padded_shape), torch.zeros(padded_shape)
    gaussian = gaussian_importance(roi)
    for x in window_starts(padded_shape[0], roi[0], overlap):
        for y in window_starts(padded_shape[1], roi[1], overlap):
            for z in window_starts(padded_shape[2], roi[2], overlap):
                window = (slice(x, x + roi[0]), slice(y, y + roi[1]), slice(z, z + roi[2]))
                tile = padded[(slice(None), *window)][None].to(device)
                network.zero_grad(set_to_none=True)
                if method == "gradcam":
                    tile_map = _gradcam_tile(network, tile, class_index, layer_module)
                else:
                    tile_map = _gradient_tile(network, tile, class_index)
                if tile_map is not None:
                    total[window] += tile_map.cpu() * gaussian
                weight[window] += gaussian
    network.zero_grad(set_to_none=True)
    result = (total / weight.clamp_min(1e-6))[:spatial[0], :spatial[1], :spatial[2]].numpy()
    peak = float(result.max())
    return (result / peak if peak > 0 else result).astype(np.float32)
