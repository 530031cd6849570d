"""The JSON run report every ``medai`` command writes with ``--report FILE``.

Keys: ``command``, ``inputs``, ``outputs``, ``parameters``, ``metrics``, ``timings_s``,
``versions``, ``device`` (see shared DESIGN conventions), plus ``warnings`` (suspicious results),
``error`` (the one-line error of a failed run, else null) and ``exit_code``.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def versions() -> dict:
    """Versions of Python and the libraries MedAI's results depend on."""
    out = {"python": platform.python_version()}
    for module in ("MedAICommonLib", "numpy", "scipy", "SimpleITK", "vtk", "torch", "monai", "pydicom"):
        try:
            mod = __import__(module)
            out[module] = getattr(mod, "__version__", None) or getattr(mod, "Version", lambda: None)()
        except Exception:  # noqa: BLE001 - a missing optional library is reported as None
            out[module] = None
    try:
        from importlib.metadata import version

        out["slicer-core"] = version("slicer-core")
    except Exception:  # noqa: BLE001
        out["slicer-core"] = None
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class Report:
    """Collects what a command did; :meth:`write` saves it atomically as JSON."""

    command: str
    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    device: str = "cpu"
    warnings: list = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0

    @contextmanager
    def timed(self, name: str):
        """Context manager adding the elapsed seconds of its block to ``timings_s[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = round(self.timings_s.get(name, 0.0) + time.perf_counter() - start, 4)

    def as_dict(self) -> dict:
        """The report as plain JSON-able data."""
        return _jsonable(
            {
                "command": self.command,
                "inputs": self.inputs,
                "outputs": self.outputs,
                "parameters": self.parameters,
                "metrics": self.metrics,
                "timings_s": self.timings_s,
                "versions": versions(),
                "device": self.device,
                "warnings": self.warnings,
                "error": self.error,
                "exit_code": self.exit_code,
            }
        )

    def write(self, path) -> Path:
        """Write the report to ``path`` atomically."""
        return write_json_atomic(path, self.as_dict())


def write_json_atomic(path, data) -> Path:
    """Write JSON to ``path`` through a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".medai-tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        tmp.write_text(json.dumps(_jsonable(data), indent=2))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
