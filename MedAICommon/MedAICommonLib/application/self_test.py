"""Run a module's shared scenarios as its Slicer self-test: optional packages missing means skipped, not failed.

Each module's ``<Module>Test`` class (run by Slicer's test runner, by "Reload and Test", or by
``Testing/Slicer/run_in_slicer.sh``) calls :func:`run_self_test` with its scenario modules, the
same ``scenario_<name>(scene)`` functions pytest runs. Slicer's testing mode installs nothing
(``pip_ensure`` skips in testing), so torch, numba, scikit-image or MONAI may be absent there: a
scenario (or a whole scenario module) that needs a package that is not installed is reported as
skipped with the package's name; any other error is a failure, and the self-test raises
``AssertionError`` listing them after every scenario ran. Qt-free, so pytest checks it too.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

# MedAI's own packages: a missing one of these is a broken install, never a skip.
OWN_PACKAGES = ("MedAICommonLib", "MedAISegLib", "MedAIRegisterLib", "MedAIPlanLib")

# Import name -> the name to install it by, where they differ.
PIP_NAMES = {"skimage": "scikit-image", "yaml": "pyyaml", "sklearn": "scikit-learn"}

# Outcomes of the last self-test of each module, for the headless runner's summary.
LAST_OUTCOMES: dict[str, list[ScenarioOutcome]] = {}


class ScenarioSkipped(Exception):  # noqa: N818 - names what happened, as unittest.SkipTest does
    """Raised by a scenario that cannot run here (e.g. no PythonSlicer next to this Slicer)."""


@dataclass
class ScenarioOutcome:
    """How one scenario ended: ``status`` is "passed", "skipped" or "failed"; ``message`` says why."""

    module: str
    name: str
    status: str
    message: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        """One line for the log and the summary."""
        why = f": {self.message.splitlines()[0]}" if self.message else ""
        return f"{self.status.upper():7s} {self.module}.{self.name} ({self.seconds:.1f} s){why}"


def missing_package(error: BaseException) -> str | None:
    """The name of the optional package whose absence caused ``error``, or None if it is a real failure.

    A ``ModuleNotFoundError`` for a top-level package that is not installed (and is not MedAI's own)
    qualifies, as does MedAI's ``MissingPackageError`` (raised before a feature that needs an extra).
    """
    if type(error).__name__ == "MissingPackageError":
        return str(error)
    name = getattr(error, "name", None) if isinstance(error, ImportError) else None
    if not name:
        return None
    root = name.split(".")[0]
    if root in OWN_PACKAGES:
        return None
    try:
        installed = importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        installed = False
    return None if installed else PIP_NAMES.get(root, root)


def scenario_functions(module) -> list[tuple[str, Callable]]:
    """``(name, function)`` of every ``scenario_*`` function of a module, in name order."""
    return [
        (name, getattr(module, name))
        for name in sorted(dir(module))
        if name.startswith("scenario_") and callable(getattr(module, name))
    ]


def _run_one(module_name: str, name: str, function, scene) -> ScenarioOutcome:
    start = time.perf_counter()
    try:
        function(scene)
    except ScenarioSkipped as skipped:
        return ScenarioOutcome(module_name, name, "skipped", str(skipped), time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - every error is reported; the runner goes on
        package = missing_package(error)
        seconds = time.perf_counter() - start
        if package is not None:
            return ScenarioOutcome(
                module_name,
                name,
                "skipped",
                f"needs the Python package {package}, which is not installed (install the module's requirements)",
                seconds,
            )
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return ScenarioOutcome(module_name, name, "failed", f"{detail}\n{traceback.format_exc()}", seconds)
    return ScenarioOutcome(module_name, name, "passed", "", time.perf_counter() - start)


def run_scenarios(
    scenario_modules: list[str], scene, reset: Callable | None = None, display: Callable[[str], None] = print
) -> list[ScenarioOutcome]:
    """Import each scenario module by name and run its scenarios on ``scene``; returns the outcomes.

    Args:
        scenario_modules: dotted names, e.g. ``["MedAIPlanLib.scenarios", "MedAIPlanLib.evaluation_scenarios"]``.
        scene: the MRML scene the scenarios build their nodes in (Slicer's ``slicer.mrmlScene``).
        reset: called before each scenario (e.g. the Test class's ``setUp``, which clears the scene).
        display: where each outcome line goes (the Test class's ``delayDisplay``, or ``print``).
    """
    outcomes = []
    for dotted in scenario_modules:
        try:
            module = importlib.import_module(dotted)
        except Exception as error:  # noqa: BLE001 - a missing optional package skips the module
            package = missing_package(error)
            status = "skipped" if package else "failed"
            message = (
                f"needs the Python package {package}, which is not installed" if package else traceback.format_exc()
            )
            outcomes.append(ScenarioOutcome(dotted, "<import>", status, message))
            display(outcomes[-1].line())
            continue
        for name, function in scenario_functions(module):
            if reset is not None:
                reset()
            outcomes.append(_run_one(dotted, name, function, scene))
            display(outcomes[-1].line())
    return outcomes


def summary(module_name: str, outcomes: list[ScenarioOutcome]) -> str:
    """``"MedAIPlan: 7 passed, 2 skipped, 0 failed"``."""
    counts = {status: sum(o.status == status for o in outcomes) for status in ("passed", "skipped", "failed")}
    return f"{module_name}: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed"


def run_self_test(
    module_name: str,
    scenario_modules: list[str],
    scene,
    reset: Callable | None = None,
    display: Callable[[str], None] = print,
) -> list[ScenarioOutcome]:
    """A module's self-test: run its scenarios, show the summary, raise ``AssertionError`` on any failure.

    Outcomes are also kept in :data:`LAST_OUTCOMES` under ``module_name`` for the headless runner.
    """
    outcomes = run_scenarios(scenario_modules, scene, reset, display)
    LAST_OUTCOMES[module_name] = outcomes
    display(summary(module_name, outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise AssertionError(summary(module_name, outcomes) + "\n" + "\n".join(o.line() for o in failed))
    if not any(o.status == "passed" for o in outcomes):
        display(f"{module_name}: no scenario could run here; install the module's requirements to test it")
    return outcomes
