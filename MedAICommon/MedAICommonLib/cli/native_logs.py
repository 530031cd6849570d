"""VTK's and ITK's own log kept off the terminal while a ``medai`` command runs, without importing either.

A command that fails on a missing file never loads VTK or SimpleITK, and importing them only to silence them
costs seconds of start-up. :func:`quiet_native_logs` silences a library already imported at once, and one
imported later (``vtkmodules.vtkCommonCore``, ``SimpleITK``) as soon as its module has run, through a finder
placed first on ``sys.meta_path`` for the duration of the ``with`` block (and put first again once ``vtkmodules``
has placed its own finder there). On leaving, every library silenced is given back its previous output window /
warning display.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType

VTK_PACKAGE = "vtkmodules"
VTK_CORE = "vtkmodules.vtkCommonCore"
SIMPLEITK = "SimpleITK"


class _RunAfter(importlib.abc.Loader):
    """A loader that runs ``action(module)`` once the wrapped loader has executed the module."""

    def __init__(self, loader, action: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._action = action

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._action(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _OnImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` with the other finders and wraps its loader so that ``action`` runs after it."""

    def __init__(self, actions: dict[str, Callable[[ModuleType], None]]) -> None:
        self.actions = actions

    def find_spec(self, fullname, path, target=None):
        action = self.actions.pop(fullname, None)
        if action is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfter(spec.loader, action)
                return spec
        return None


def _to_front(finder) -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(finder)
    sys.meta_path.insert(0, finder)


@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True):
    """Within the block, VTK's output window and ITK's warning display write nowhere (``enabled=False``: no-op).

    Neither library is imported here: one that is not loaded yet is silenced when something imports it.
    """
    if not enabled:
        yield
        return
    restore: list[Callable[[], None]] = []

    def quiet_vtk(core: ModuleType) -> None:
        previous = core.vtkOutputWindow.GetInstance()
        core.vtkOutputWindow.SetInstance(core.vtkStringOutputWindow())
        restore.append(lambda: core.vtkOutputWindow.SetInstance(previous))

    def quiet_itk(sitk: ModuleType) -> None:
        previous = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        restore.append(lambda: sitk.ProcessObject.SetGlobalWarningDisplay(previous))

    pending: dict[str, Callable[[ModuleType], None]] = {}
    for name, action in ((VTK_CORE, quiet_vtk), (SIMPLEITK, quiet_itk)):
        if name in sys.modules:
            action(sys.modules[name])
        else:
            pending[name] = action
    finder = _OnImport(pending)
    if VTK_CORE in pending and VTK_PACKAGE not in sys.modules:
        # vtkmodules puts its own finder of vtkmodules.vtk* first; this one goes back in front of it
        pending[VTK_PACKAGE] = lambda _module: _to_front(finder)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for undo in reversed(restore):
            undo()
