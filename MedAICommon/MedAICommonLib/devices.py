"""Compute device selection: ``auto`` (CUDA, then MPS, then CPU), ``cuda``, ``mps`` or ``cpu``."""

from __future__ import annotations

import contextlib
from typing import Literal

Device = Literal["auto", "cuda", "mps", "cpu"]
"""A compute device as the commands and Logic take it (``select_device`` also accepts ``cuda:N``)."""


def torch_available() -> bool:
    """True when torch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def select_device(name: str = "auto"):
    """A ``torch.device`` for ``name``; raises ValueError when the asked device is missing."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("MPS was asked for but is not available; use --device cpu or auto.")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"Unknown device {name!r}; use auto, cuda, mps or cpu.")
    return torch.device(name)


def describe_devices() -> dict:
    """What compute devices this process can use (for reports and ``medai info``)."""
    info = {"cpu": True, "cuda": False, "mps": False, "cuda_devices": []}
    if not torch_available():
        info["torch"] = None
        return info
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = bool(torch.cuda.is_available())
    if info["cuda"]:
        info["cuda_devices"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
    return info


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with torch's CPU ops on ``n`` threads (restored afterwards).

    For small torch CPU work between numba's parallel kernels: two OpenMP pools then fight for the
    same cores and a 6 ms FFT can stall for 50-90 ms."""
    import torch

    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)
