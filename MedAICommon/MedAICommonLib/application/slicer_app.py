"""Helpers for MedAI's module panels inside the Slicer application (Qt available).

Only the module files (``MedAISeg.py`` ...) and the widget base import this; Logic and algorithms never do.

Python packages are installed through the API each Slicer version really has (checked against Slicer's own
sources by ``Testing/Python/test_slicer_contract.py``):

- Slicer >= 5.12: ``slicer.packaging`` (``load_requirements``, ``pip_check``, ``pip_ensure``). The module is
  not imported by ``import slicer``, so it is imported explicitly.
- Slicer 5.8 and 5.10: ``slicer.util.pip_install(requirements)``; what is missing is found with
  ``importlib.metadata`` and ``packaging`` (bundled with Slicer since at least 5.8, in its
  ``python-pythonqt-requirements``).

Either way the user is asked once, listing the missing packages; declining returns False, no exception.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import logging
import subprocess
import tempfile
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

import slicer

PACKAGING_SINCE = (5, 12)
"""First Slicer (major, minor) whose ``slicer.packaging`` module has ``pip_ensure``."""

INSTALL_WITH_PACKAGING = "slicer.packaging.pip_ensure"
INSTALL_WITH_UTIL = "slicer.util.pip_install"

BUNDLED_DISTRIBUTIONS = ("numpy", "scipy", "SimpleITK", "pydicom", "packaging")
"""Packages Slicer ships with its Python; pip may not replace them while installing MedAI's requirements."""

TORCH_REQUIREMENT = ">=2.1"
"""torch version MedAI needs (pyproject.toml); passed to PyTorchUtils when it installs torch."""


def _(text: str) -> str:
    """Translate a user-facing string with Slicer's ``slicer.i18n.tr`` (unchanged where it is not available)."""
    try:
        from slicer.i18n import tr
    except ImportError:  # slicer-core (tests, batch) has no translations
        return text
    return tr(text)


def installer_for(slicer_version: tuple[int, int]) -> str:
    """Which Slicer API installs Python packages on ``slicer_version`` ``(major, minor)``.

    Returns :data:`INSTALL_WITH_PACKAGING` from Slicer 5.12 on, :data:`INSTALL_WITH_UTIL` before.
    """
    major, minor = (int(part) for part in tuple(slicer_version)[:2])
    return INSTALL_WITH_PACKAGING if (major, minor) >= PACKAGING_SINCE else INSTALL_WITH_UTIL


def running_slicer_version() -> tuple[int, int]:
    """``(major, minor)`` of the running Slicer application."""
    return int(slicer.app.majorVersion), int(slicer.app.minorVersion)


def read_requirements(requirements_file) -> list[Requirement]:
    """Requirements of a ``requirements.txt`` (comments, blank lines and ``-`` options skipped).

    Raises ``ValueError`` naming the file and line when a line is not a valid requirement.
    """
    path = Path(requirements_file)
    if not path.is_file():
        raise ValueError(f"Requirements file {path} does not exist; reinstall the MedAI extension.")
    requirements = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirements.append(Requirement(line))
        except InvalidRequirement as error:
            raise ValueError(
                f"{path}, line {number}: {line!r} is not a valid requirement ({error}); "
                f"write one 'name>=version' per line, comments on their own lines."
            ) from error
    return requirements


def installed_version(distribution: str) -> str | None:
    """Installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: list[Requirement], version_of=installed_version) -> list[Requirement]:
    """The requirements not satisfied here: not installed, or installed at a version outside the specifier.

    ``version_of(name)`` returns the installed version string or None. Requirements whose environment
    marker does not apply here count as satisfied. Extras are not followed.
    """
    missing = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def bundled_constraints(version_of=installed_version) -> list[str]:
    """``name==version`` lines pinning Slicer's bundled packages, so that pip installs around them."""
    pins = []
    for name in BUNDLED_DISTRIBUTIONS:
        version = version_of(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins


def ensure_requirements(requirements_file, requester: str) -> bool:
    """Install the module's missing Python packages after asking the user once; True when all are present.

    Args:
        requirements_file: the module's ``Resources/requirements-<ModuleName>.txt``.
        requester: module name shown in the dialogs.

    Returns False (no exception) when the user declines or the installation fails; the caller then tells
    the user that required Python packages are missing.
    """
    requirements = read_requirements(requirements_file)
    installer = installer_for(running_slicer_version())
    if installer == INSTALL_WITH_PACKAGING:
        return _ensure_with_packaging(requirements, requester)
    return _ensure_with_pip_install(requirements, requester)


def _ensure_with_packaging(requirements: list[Requirement], requester: str) -> bool:
    """Slicer >= 5.12: ``slicer.packaging.pip_ensure`` installs, after MedAI's own single prompt."""
    import slicer.packaging  # not imported by ``import slicer``

    missing = [req for req in requirements if not slicer.packaging.pip_check(req)]
    if not missing:
        return True
    if not _user_agrees(requester, missing):
        return False
    with _bundled_constraints_file() as constraints:
        try:
            slicer.packaging.pip_ensure(missing, constraints=constraints, prompt_install=False, requester=requester)
        except (subprocess.CalledProcessError, RuntimeError) as error:
            _show_install_failure(requester, missing, error)
            return False
    return slicer.packaging.pip_check(requirements)


def _ensure_with_pip_install(requirements: list[Requirement], requester: str) -> bool:
    """Slicer 5.8 and 5.10: ``slicer.util.pip_install`` with a constraints file, after one prompt."""
    missing = missing_requirements(requirements)
    if not missing:
        return True
    if not _user_agrees(requester, missing):
        return False
    if slicer.app.testingEnabled():
        # As pip_ensure does on newer Slicer: a self-test never modifies the Python environment.
        logging.info("Testing mode: not installing %s", ", ".join(str(req) for req in missing))
        return False
    with _bundled_constraints_file() as constraints:
        arguments = ["-c", constraints] + [str(req) for req in missing]
        try:
            with slicer.util.WaitCursor():
                slicer.util.pip_install(arguments)
        except (subprocess.CalledProcessError, RuntimeError) as error:
            _show_install_failure(requester, missing, error)
            return False
    importlib.invalidate_caches()
    return not missing_requirements(requirements)


def _user_agrees(requester: str, missing: list[Requirement]) -> bool:
    """Ask once, listing the packages to install; True when the user accepts."""
    names = "\n".join(f"- {req}" for req in missing)
    return bool(
        slicer.util.confirmOkCancelDisplay(
            _(
                "{requester} needs {count} Python package(s) that are not installed:\n{names}\n\n"
                "Install them now into Slicer's Python? This may take several minutes."
            ).format(requester=requester, count=len(missing), names=names),
            windowTitle=_("{requester}: install Python packages").format(requester=requester),
        )
    )


def _show_install_failure(requester: str, missing: list[Requirement], error: Exception) -> None:
    """Tell the user that pip failed, with what to do."""
    logging.error("Installing %s failed: %s", ", ".join(str(req) for req in missing), error)
    slicer.util.errorDisplay(
        _(
            "{requester} could not install {names}. Check the internet connection; the Python console shows "
            "pip's messages."
        ).format(requester=requester, names=", ".join(str(req) for req in missing)),
        windowTitle=_("{requester}: installation failed").format(requester=requester),
    )


@contextlib.contextmanager
def _bundled_constraints_file():
    """A temporary pip constraints file pinning Slicer's bundled packages; yields its path, removed after."""
    with tempfile.TemporaryDirectory(prefix="medai-constraints-") as folder:
        path = Path(folder) / "constraints.txt"
        path.write_text("\n".join(bundled_constraints()) + "\n", encoding="utf-8")
        yield str(path)


def ensure_torch(requester: str) -> bool:
    """Make sure torch is importable, installing it through the PyTorch extension's PyTorchUtils.

    PyTorchUtils (github.com/fepegar/SlicerPyTorch) installs the torch build that matches the GPU
    driver: ``PyTorchUtilsLogic.torchInstalled()`` and ``installTorch(askConfirmation,
    torchVersionRequirement=...)``, which returns the torch module or None.
    """
    if importlib.util.find_spec("torch") is not None:
        return True
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay(
            _(
                "{requester} needs the PyTorch extension; install it from the Extensions "
                "Manager, restart Slicer and try again."
            ).format(requester=requester)
        )
        return False
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("{requester} needs PyTorch (torch{version}). Install it now? This may take several minutes.").format(
            requester=requester, version=TORCH_REQUIREMENT
        ),
        windowTitle=_("{requester}: install PyTorch").format(requester=requester),
    ):
        return False
    try:
        torch = logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
    except subprocess.CalledProcessError as error:
        _show_install_failure(requester, [Requirement(f"torch{TORCH_REQUIREMENT}")], error)
        return False
    return torch is not None and logic.torchInstalled()


def progress_to_status_bar(progress_bar=None):
    """A ``(stage, fraction)`` callback that updates a progress bar and the status bar and keeps the GUI alive."""

    def callback(stage: str, fraction: float) -> None:
        if progress_bar is not None:
            progress_bar.setValue(int(round(fraction * 100)))
            progress_bar.setFormat(f"{stage} %p%")
        slicer.util.showStatusMessage(f"{stage}: {fraction * 100:.0f}%")
        slicer.app.processEvents()

    return callback
