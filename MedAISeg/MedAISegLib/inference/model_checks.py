"""Model files are untrusted data: load them safely and turn low-level failures into clear errors.

- :func:`load_state_dict_file`: ``torch.load(weights_only=True)``; a pickle that would run code is
  refused, a truncated/corrupt file says so and asks to re-download or re-export.
- :func:`load_torchscript_file`: the same for TorchScript archives.
- :func:`pickle_code_references`: the callables a pickle would run, read without running them, so a
  file that holds code is named as such instead of "corrupt".
- :func:`explain_channel_error`: a network's "expected input ... to have N channels, but got M"
  ``RuntimeError`` becomes a ``ValueError`` naming expected vs given channels.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from MedAICommonLib.cohort.model_cache import cached_model

_CORRUPT = (
    "central directory",
    "zip archive",
    "unexpected eof",
    "ran out of input",
    "corrupt",
    "truncated",
    "invalid header",
    "failed finding",
    "file not found in archive",
    "pytorchstreamreader",
)
_CHANNELS = re.compile(r"expected input\[([^\]]*)\] to have (\d+) channels, but got (\d+) channels")


_PLAIN_DATA_GLOBALS = ("collections.OrderedDict", "torch.", "__torch__.")


def pickle_code_references(path) -> list[str]:
    """Callables (``module.name``) that the pickle in ``path`` would import and call when loaded: every
    GLOBAL / STACK_GLOBAL / INST reference except torch's own tensor and storage rebuilders and
    ``OrderedDict``. Read statically with :mod:`pickletools` (nothing is executed); a torch.save zip
    archive is read through its ``data.pkl``. Empty when the file is no readable pickle."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a malformed stream: report what was found before it
        pass
    return [g for g in dict.fromkeys(found) if not g.startswith(_PLAIN_DATA_GLOBALS)]


def _code_error(path: Path, references: list[str]) -> ValueError:
    return ValueError(
        f"Refused to load {path}: the file holds code, not only weights (its pickle calls "
        f"{', '.join(references[:5])} when loaded; torch.load(weights_only=True) refuses such a "
        "GLOBAL/REDUCE). MedAI never runs it; only use model files from a source you trust, and "
        "re-download or re-export the model as plain weights or TorchScript."
    )


def _corrupt_error(path: Path, error: BaseException) -> ValueError:
    first = str(error).strip().split(". ")[0] if str(error).strip() else type(error).__name__
    return ValueError(
        f"The model weights {path} are truncated or corrupt ({first[:160]}); re-download or re-export the model."
    )


def _looks_corrupt(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, (EOFError, zipfile.BadZipFile)) or any(word in text for word in _CORRUPT)


def load_state_dict_file(path) -> dict:
    """State dict from ``path`` (``torch.load(weights_only=True)``; a ``{"model": {...}}`` checkpoint is
    unwrapped). ``ValueError`` when the file would run code, is truncated/corrupt, or holds no weights.
    In a ``medai batch`` step with ``needs: [model]`` the worker's model cache serves a repeated load."""
    return cached_model("state_dict", path, "cpu", lambda: _load_state_dict_file(Path(path)))


def _load_state_dict_file(path: Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        references = pickle_code_references(path)
        if references:
            raise _code_error(path, references) from error
        if "weights only" in str(error).lower() or "weights_only" in str(error).lower():
            raise ValueError(
                f"Refused to load {path}: it is not plain weights (torch.load weights_only=True "
                f"refused it: {str(error).splitlines()[0][:200]}). Only use model files from a "
                "source you trust; re-download or re-export the model."
            ) from error
        raise _corrupt_error(path, error) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        if isinstance(error, OSError) or _looks_corrupt(error):
            raise _corrupt_error(path, error) from error
        raise
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no network weights (a state dict of tensors); re-export the model "
            "with torch.save(network.state_dict(), ...)."
        )
    return state


def load_torchscript_file(path, device="cpu"):
    """``torch.jit.load`` with a clear ``ValueError`` for truncated/corrupt or non-TorchScript files.
    In a ``medai batch`` step with ``needs: [model]`` the worker's model cache serves a repeated load."""
    return cached_model("torchscript", path, device, lambda: _load_torchscript_file(Path(path), device))


def _load_torchscript_file(path: Path, device):
    try:
        return torch.jit.load(str(path), map_location=torch.device(device))
    except (RuntimeError, ValueError, EOFError, OSError) as error:
        references = pickle_code_references(path)
        if references:
            raise _code_error(path, references) from error
        if isinstance(error, OSError) or _looks_corrupt(error):
            raise _corrupt_error(path, error) from error
        raise ValueError(
            f"{path} is not a TorchScript model ({str(error).splitlines()[0][:160]}); export it "
            "with torch.jit.save, or re-download the model."
        ) from error


def load_weights_into(network, state: dict, path) -> None:
    """``network.load_state_dict(state)`` with a ``ValueError`` naming ``path`` when they do not fit."""
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"The weights {path} do not fit the bundle's network_def "
            f"({' '.join(str(error).split())[:240]}); re-download or re-export the model."
        ) from error


def first_layer_channels(network) -> int | None:
    """Input channels of the first convolution (first 5-D weight), or None when there is none."""
    for parameter in network.parameters() if hasattr(network, "parameters") else []:
        if parameter.ndim == 5:
            return int(parameter.shape[1])
    return None


def explain_channel_error(error: BaseException, given: int, model: str) -> ValueError | None:
    """A ``ValueError`` for a network/input channel mismatch, or None when ``error`` is something else."""
    match = _CHANNELS.search(str(error))
    if match is None:
        return None
    expected = int(match.group(2))
    return ValueError(
        f"The model {model} expects {expected} input channel(s) but was given {given}; "
        f"select {expected} input volume(s), or fix the model "
        "card's 'inputs' / the bundle's network_def so they match the network."
    )
