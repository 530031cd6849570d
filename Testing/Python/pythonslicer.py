"""A ``slicer`` package holding exactly what Slicer's ``PythonSlicer`` gives a background job.

In ``PythonSlicer`` (Slicer's standalone interpreter, which runs MedAI's workers) ``import slicer``
runs Slicer's own ``Base/Python/slicer/__init__.py``: it star-imports the kits listed in
``Base/Python/CMakeLists.txt`` (``Slicer_PYTHON_MODULES_CONFIG``) into the namespace and skips the
PythonQt kits, so ``slicer`` holds MRML (core, logic, CLI, displayable managers), vtkAddon,
vtkSegmentationCore and the base application logic, but no module logic (colours, segmentations,
markups, ...), no ``slicer.app`` and no ``slicer.mrmlScene``. The ``slicer-core`` wheel instead
exports every compiled library into ``slicer``, which hides any dependence on module logics.

:func:`build_pythonslicer` writes, into a folder, Slicer's real Python layer from the reference copy
of a Slicer version (``__init__.py``, ``util.py``, ``mrml.py``, ``vtkSegmentationCore.py``, ...), the
``kits.py`` that CMake generates from that version's kit list, and the compiled ``*Python`` modules
those files import, loaded from slicer-core's own compiled libraries. A child Python with that folder
first on ``PYTHONPATH`` sees ``slicer`` as ``PythonSlicer`` does.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SLICER_REFERENCE = REPO.parent / "shared" / "reference" / "slicer"
DEFAULT_VERSION = "v5.12.3"

# Compiled module each of Slicer's Python files imports -> slicer-core's library providing it.
_COMPILED_MODULES = {
    "MRMLCorePython": "MRMLCore",
    "MRMLLogicPython": "MRMLLogic",
    "MRMLCLIPython": "MRMLCLI",
    "MRMLDisplayableManagerPython": "MRMLDisplayableManager",
    "vtkAddonPython": "vtkAddonPython",
    "vtkSegmentationCorePython": "vtkSegmentationCore",
    "SlicerBaseLogicPython": "vtkSlicerBaseLogic",
    "vtkITKPython": "vtkITK",
    "vtkTeemPython": "vtkTeem",
}

# slicer-core's compiled libraries that exist in a Slicer installation's bin/Python or lib/Slicer-X:
# the kits and the base libraries they link (vtkITK, vtkTeem, vtkRemoteIO). Module logics are absent.
_BASE_LIBRARIES = sorted(set(_COMPILED_MODULES.values()) | {"vtkRemoteIO"})

_SLICER_CORE_SHIM = '''"""slicer-core's compiled base libraries, without its module logics (as in PythonSlicer).

slicer-core's own __init__ imports every library (module logics included); this package only lets
the compiled kits and the base libraries they link be imported from its folder.
"""

import importlib.machinery
import importlib.util
import sys

_FOLDER = {folder!r}
_ALLOWED = {allowed!r}
__path__ = []


class _BaseLibraryFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        package, _, leaf = name.rpartition(".")
        if package != __name__ or leaf not in _ALLOWED:
            return None
        for suffix in importlib.machinery.EXTENSION_SUFFIXES + [".so"]:
            candidate = _FOLDER + "/" + leaf + suffix
            try:
                open(candidate, "rb").close()
            except OSError:
                continue
            loader = importlib.machinery.ExtensionFileLoader(name, candidate)
            return importlib.util.spec_from_file_location(name, candidate, loader=loader)
        return None


sys.meta_path.insert(0, _BaseLibraryFinder)
'''


def slicer_core_folder() -> Path:
    """The folder of slicer-core's compiled libraries (found without importing slicer-core)."""
    spec = importlib.util.find_spec("slicer_core")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("slicer-core is not installed; pip install slicer-core")
    return Path(next(iter(spec.submodule_search_locations)))


def pythonslicer_kits(version: str = DEFAULT_VERSION) -> list[str]:
    """The kits ``slicer/kits.py`` lists in that Slicer version (as CMake configures it, CLI support on)."""
    text = (SLICER_REFERENCE / version / "Base" / "Python" / "CMakeLists.txt").read_text()
    blocks = re.findall(r'set\(Slicer_PYTHON_MODULES_CONFIG\s+"(.*?)"\s*\)', text, re.S)
    kits = []
    for block in blocks:
        kits += re.findall(r"'([A-Za-z0-9_]+)'", block)
    return list(dict.fromkeys(kits))


def standalone_kits(version: str = DEFAULT_VERSION) -> list[str]:
    """The kits Slicer's ``__init__.py`` imports in a standalone interpreter (PythonQt kits skipped)."""
    return [kit for kit in pythonslicer_kits(version) if "PythonQt" not in kit]


def build_pythonslicer(folder, version: str = DEFAULT_VERSION) -> Path:
    """Write PythonSlicer's ``slicer`` package (and the modules it imports) into ``folder``.

    ``version`` names the reference copy of Slicer's Python layer to use (``v5.8.1``, ``v5.10.0``,
    ``v5.12.3`` or ``main-2026-08-21``). Returns ``folder``: put it first on a child's ``PYTHONPATH``.
    """
    source = SLICER_REFERENCE / version / "Base" / "Python"
    if not source.is_dir():
        raise FileNotFoundError(f"No reference copy of Slicer's Python layer at {source}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():  # slicer/ (with util.py, logic.py, ...) and the top-level kit modules
        if item.is_dir():
            shutil.copytree(item, folder / item.name, dirs_exist_ok=True)
        elif item.suffix == ".py":
            shutil.copy2(item, folder / item.name)
    kits = ",\n".join(repr(kit) for kit in pythonslicer_kits(version))
    (folder / "slicer" / "kits.py").write_text(f"available_kits = [\n{kits},\n]\n")
    for module, library in _COMPILED_MODULES.items():
        (folder / f"{module}.py").write_text(f"from slicer_core.{library} import *  # noqa: F403\n")
    (folder / "slicer_core").mkdir(exist_ok=True)
    (folder / "slicer_core" / "__init__.py").write_text(
        _SLICER_CORE_SHIM.format(folder=str(slicer_core_folder()), allowed=_BASE_LIBRARIES)
    )
    return folder
