"""Optional packages: imported only by the parts that need them, with a clear message when missing.

The core (every ``medai`` command, the three modules) needs only ``[project].dependencies``; heavier
extras such as ONNX export (``onnx``, ``onnxruntime``: ``pip install 'medai[export]'``) are checked
here before use, so a missing one is named with the way to install it instead of a traceback.
"""

from __future__ import annotations

import importlib.util


class MissingPackageError(ImportError):
    """An optional package that a requested feature needs is not installed."""


def missing_packages(names: list[str]) -> list[str]:
    """The import names in ``names`` that cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def require_packages(names: list[str], feature: str, install_hint: str) -> None:
    """Raise :class:`MissingPackageError` naming ``feature``, the missing packages and ``install_hint``."""
    missing = missing_packages(names)
    if missing:
        raise MissingPackageError(
            f"{feature} needs the Python package(s) {', '.join(missing)}, which are not "
            f"installed; install them with: {install_hint}"
        )
