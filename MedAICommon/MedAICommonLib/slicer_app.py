"""Helpers for MedAI's module panels inside the Slicer application (Qt available).

Only the module files (``MedAISeg.py`` ...) import this; Logic and algorithms never do.
"""

from __future__ import annotations

from pathlib import Path

import slicer


def ensure_requirements(requirements_file, requester: str) -> bool:
    """Install the module's missing Python packages after asking the user; True when all are present.

    Uses ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11; older ``slicer.packaging``) with the
    module's ``Resources/requirements.txt``. torch itself comes from the PyTorch extension.
    """
    pydeps = getattr(slicer, "pydeps", None) or getattr(slicer, "packaging", None)
    if pydeps is None:
        import slicer.pydeps as pydeps  # noqa: PLC0415 - imported on demand, Slicer >= 5.11
    requirements = pydeps.load_requirements(str(Path(requirements_file)))
    if pydeps.pip_check(requirements):
        return True
    names = ", ".join(str(r) for r in requirements)
    if not slicer.util.confirmOkCancelDisplay(
            f"{requester} needs these Python packages: {names}.\nInstall them now? (This may take minutes.)",
            windowTitle=f"{requester}: install Python packages"):
        return False
    with slicer.util.WaitCursor():
        pydeps.pip_ensure(requirements, requester=requester)
    return bool(pydeps.pip_check(requirements))


def ensure_torch(requester: str) -> bool:
    """Make sure torch is importable, installing it through the PyTorch extension's PyTorchUtils."""
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        pass
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(f"{requester} needs the PyTorch extension; install it from the Extensions Manager.")
        return False
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        if not slicer.util.confirmOkCancelDisplay(f"{requester} needs PyTorch. Install it now?"):
            return False
        logic.installTorch(askConfirmation=False)
    return logic.torchInstalled()


def progress_to_status_bar(progress_bar=None):
    """A ``(stage, fraction)`` callback that updates a progress bar and the status bar and keeps the GUI alive."""

    def callback(stage: str, fraction: float) -> None:
        if progress_bar is not None:
            progress_bar.setValue(int(round(fraction * 100)))
            progress_bar.setFormat(f"{stage} %p%")
        slicer.util.showStatusMessage(f"{stage}: {fraction * 100:.0f}%")
        slicer.app.processEvents()

    return callback
