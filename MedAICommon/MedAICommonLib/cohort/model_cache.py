"""The worker-local model cache: a model file is loaded once per worker process and kept for every case.

Off by default, so a single ``medai`` run and the panels load as before. ``medai batch`` turns it on,
with :func:`model_cache_enabled`, around the steps that declare ``needs: [model]``. MedAISeg's model
loaders (``load_torchscript_file``, ``load_state_dict_file``) ask :func:`cached_model`, which keys an
entry by the model file's path and SHA-256 (so an edited model is loaded again), the kind and device.
Cached objects are shared: callers must not change them in place beyond ``.to(device).eval()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .digests import file_digest

_models: dict[tuple[str, str, str, str], object] = {}
_state = threading.local()
_lock = threading.Lock()
stats = {"hits": 0, "loads": 0}


@contextmanager
def model_cache_enabled(enabled: bool = True):
    """Within the block (in this thread), model loaders keep and reuse what they load."""
    previous = getattr(_state, "enabled", False)
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def cache_active() -> bool:
    """True inside :func:`model_cache_enabled` in this thread."""
    return bool(getattr(_state, "enabled", False))


def cached_model(kind: str, path, device, load: Callable[[], object]):
    """``load()``, or the object loaded before for the same ``kind``, file (path + SHA-256) and ``device``.

    Outside :func:`model_cache_enabled` this is just ``load()``.
    """
    path = Path(path)
    if not cache_active() or not path.is_file():  # a missing file: the loader's own error names it
        return load()
    key = (kind, str(path.resolve()), file_digest(path), str(device))
    with _lock:
        if key in _models:
            stats["hits"] += 1
            return _models[key]
    model = load()
    with _lock:
        _models[key] = model
        stats["loads"] += 1
    return model


def clear_model_cache() -> None:
    """Forget every cached model (and the hit/load counts)."""
    with _lock:
        _models.clear()
        stats.update(hits=0, loads=0)
