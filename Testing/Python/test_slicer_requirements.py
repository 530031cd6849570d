"""Python package installation in Slicer: which API per Slicer version, what is missing, what each module lists.

The module-version decision and the requirement checks are pure and run here without the Slicer application;
``test_slicer_contract.py`` checks the Slicer calls themselves against Slicer's sources.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from MedAICommonLib.application import slicer_app

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

REPO = Path(__file__).resolve().parents[2]
MODULES = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")

# What Slicer's Python ships (Slicer/Slicer SuperBuild: External_python-numpy, -scipy, -dicom-requirements,
# -pythonqt-requirements (packaging), -requests-requirements, SimpleITK, VTK, PythonQt/CTK), plus torch
# from the PyTorch extension and PyTorchUtils, the extension's own module.
PROVIDED_BY_SLICER = {
    "numpy",
    "scipy",
    "SimpleITK",
    "pydicom",
    "PIL",
    "packaging",
    "requests",
    "vtk",
    "slicer",
    "qt",
    "ctk",
    "torch",
    "PyTorchUtils",
}


def requirement_file(module: str) -> Path:
    return REPO / module / "Resources" / f"requirements-{module}.txt"


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def third_party_imports(module: str) -> set[str]:
    """Top-level names imported by the module file, its Lib and MedAICommonLib (which every module imports)."""
    files = [REPO / module / f"{module}.py", *sorted((REPO / module / f"{module}Lib").rglob("*.py"))]
    files += sorted((REPO / "MedAICommon" / "MedAICommonLib").rglob("*.py"))
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and not n.startswith("MedAI")}


@pytest.mark.parametrize(
    ("version", "installer"),
    [
        ((5, 8), slicer_app.INSTALL_WITH_UTIL),
        ((5, 10), slicer_app.INSTALL_WITH_UTIL),
        ((5, 11), slicer_app.INSTALL_WITH_UTIL),
        ((5, 12), slicer_app.INSTALL_WITH_PACKAGING),
        ((5, 13), slicer_app.INSTALL_WITH_PACKAGING),
        ((6, 0), slicer_app.INSTALL_WITH_PACKAGING),
        (("5", "12"), slicer_app.INSTALL_WITH_PACKAGING),
    ],
)
def test_installer_follows_the_slicer_version(version, installer):
    assert slicer_app.installer_for(version) == installer


def test_missing_requirements_compares_installed_versions():
    numpy_version = importlib.metadata.version("numpy")
    requirements = [
        Requirement(f"numpy=={numpy_version}"),
        Requirement("numpy>=999"),
        Requirement("medai-no-such-distribution>=1"),
        Requirement("numpy; python_version < '3'"),
        Requirement("torch>=2.1"),
    ]
    missing = slicer_app.missing_requirements(requirements)
    assert [str(r) for r in missing] == ["numpy>=999", "medai-no-such-distribution>=1"]
    # a local build tag (torch 2.4.0+cu121) satisfies torch>=2.1; a release candidate of the next version too
    fake_versions = {"torch": "2.4.0+cu121", "numba": "0.61.0rc1", "monai": "1.3.2"}.get
    checked = [Requirement("torch>=2.1"), Requirement("numba>=0.59"), Requirement("monai>=1.4")]
    assert [r.name for r in slicer_app.missing_requirements(checked, fake_versions)] == ["monai"]


def test_read_requirements_names_the_bad_line(tmp_path):
    good = tmp_path / "requirements-Good.txt"
    good.write_text("# comment\n\n--index-url https://example.invalid\nscipy>=1.10\nmonai[nibabel]>=1.4\n")
    assert [str(r) for r in slicer_app.read_requirements(good)] == ["scipy>=1.10", "monai[nibabel]>=1.4"]
    bad = tmp_path / "requirements-Bad.txt"
    bad.write_text("scipy>=1.10\nnumba >= 0.59  # JIT kernels\n")
    with pytest.raises(ValueError, match=r"requirements-Bad.txt, line 2: .*numba"):
        slicer_app.read_requirements(bad)
    with pytest.raises(ValueError, match="does not exist"):
        slicer_app.read_requirements(tmp_path / "absent.txt")


def test_bundled_packages_are_pinned_for_pip():
    pins = slicer_app.bundled_constraints({"numpy": "2.4.6", "scipy": "1.17.1", "pydicom": None}.get)
    assert pins == ["numpy==2.4.6", "scipy==1.17.1"]
    here = slicer_app.bundled_constraints()
    assert f"numpy=={importlib.metadata.version('numpy')}" in here


@pytest.mark.parametrize("module", MODULES)
def test_requirement_list_names_every_imported_package(module):
    """Each module's list names every package its code (and MedAICommonLib's) imports that Slicer does not ship."""
    listed = {canonicalize_name(r.name) for r in slicer_app.read_requirements(requirement_file(module))}
    distributions = importlib.metadata.packages_distributions()
    optional = {name: reqs for name, reqs in pyproject()["project"]["optional-dependencies"].items() if name != "test"}
    extras = {canonicalize_name(Requirement(r).name) for reqs in optional.values() for r in reqs}
    # Optional extras are imported only behind a check (MedAICommonLib.optional), so they need not be installed.
    optional_imports = {name.replace("-", "_") for name in extras}
    needed = set()
    for name in third_party_imports(module) - PROVIDED_BY_SLICER - optional_imports:
        assert name in distributions, f"{module} imports {name}, which is not installed here"
        needed.update(canonicalize_name(d) for d in distributions[name])
    assert needed - extras - listed == set(), f"{requirement_file(module).name} lacks {needed - extras - listed}"


@pytest.mark.parametrize("module", MODULES)
def test_requirement_lists_match_pyproject(module):
    """A listed package carries the same version specifier as pyproject.toml, and none is listed twice."""
    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    specifiers = {canonicalize_name(r.name): str(r.specifier) for r in declared}
    listed = slicer_app.read_requirements(requirement_file(module))
    names = [canonicalize_name(r.name) for r in listed]
    assert len(names) == len(set(names))
    for requirement in listed:
        name = canonicalize_name(requirement.name)
        assert name in specifiers, f"{requirement} is not declared in pyproject.toml"
        assert str(requirement.specifier) == specifiers[name], f"{requirement} vs pyproject {specifiers[name]}"
        assert name not in {canonicalize_name(n) for n in slicer_app.BUNDLED_DISTRIBUTIONS}


class Slicer510Gui:
    """The parts of Slicer 5.10's GUI layer that the 5.8/5.10 installer touches (dialogs, pip, app version).

    Stands in for the Slicer application, which pytest does not have; MRML is not involved.
    """

    def __init__(self, answer: bool, testing: bool = False):
        self.asked, self.installed = [], []
        self.app = SimpleNamespace(majorVersion=5, minorVersion=10, testingEnabled=lambda: testing)
        self.util = SimpleNamespace(
            confirmOkCancelDisplay=self._confirm,
            pip_install=self.installed.append,
            WaitCursor=contextlib.nullcontext,
            errorDisplay=self.asked.append,
        )
        self._answer = answer

    def _confirm(self, text, windowTitle=None, **kwargs):
        self.asked.append(text)
        return self._answer


def missing_requirements_file(tmp_path) -> Path:
    path = tmp_path / "requirements-Test.txt"
    path.write_text(f"numpy>={importlib.metadata.version('numpy')}\nmedai-no-such-distribution>=1.0\n")
    return path


@pytest.mark.parametrize("answer", [False, True])
def test_before_5_12_the_user_is_asked_once_and_a_refusal_installs_nothing(tmp_path, monkeypatch, answer):
    gui = Slicer510Gui(answer)
    monkeypatch.setattr(slicer_app, "slicer", gui)
    assert slicer_app.ensure_requirements(missing_requirements_file(tmp_path), "MedAITest") is False
    assert len(gui.asked) == 1
    assert "medai-no-such-distribution>=1.0" in gui.asked[0]
    assert "numpy" not in gui.asked[0]  # installed already: not offered
    if not answer:
        assert gui.installed == []
        return
    ((flag, constraints, *requirements),) = gui.installed
    assert flag == "-c"
    assert requirements == ["medai-no-such-distribution>=1.0"]
    assert not Path(constraints).exists()  # a temporary file, removed after pip ran


def test_before_5_12_a_self_test_never_installs(tmp_path, monkeypatch):
    gui = Slicer510Gui(True, testing=True)
    monkeypatch.setattr(slicer_app, "slicer", gui)
    assert slicer_app.ensure_requirements(missing_requirements_file(tmp_path), "MedAITest") is False
    assert gui.installed == []


def test_nothing_is_asked_when_everything_is_installed(tmp_path, monkeypatch):
    gui = Slicer510Gui(False)
    monkeypatch.setattr(slicer_app, "slicer", gui)
    present = tmp_path / "requirements-Present.txt"
    present.write_text("numpy>=1.0\npackaging\n")
    assert slicer_app.ensure_requirements(present, "MedAITest") is True
    assert gui.asked == []


class SlicerPackaging512:
    """The ``slicer.packaging`` calls the 5.12 installer makes: ``pip_check`` answers from this Python's installed
    distributions, ``pip_ensure`` records its arguments (its signature is checked by test_slicer_contract.py)."""

    def __init__(self):
        self.ensured = []

    @staticmethod
    def pip_check(requirements):
        requirements = requirements if isinstance(requirements, list) else [requirements]
        return not slicer_app.missing_requirements(requirements)

    def pip_ensure(self, requirements, **kwargs):
        self.ensured.append((requirements, kwargs))


@pytest.mark.parametrize("answer", [False, True])
def test_from_5_12_pip_ensure_installs_without_asking_a_second_time(tmp_path, monkeypatch, answer):
    import slicer as slicer_package

    gui, packaging = Slicer510Gui(answer), SlicerPackaging512()
    gui.app.minorVersion = 12
    gui.packaging = packaging
    monkeypatch.setattr(slicer_app, "slicer", gui)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer_package, "packaging", packaging, raising=False)
    assert slicer_app.ensure_requirements(missing_requirements_file(tmp_path), "MedAITest") is False
    assert len(gui.asked) == 1
    assert gui.installed == []  # slicer.util.pip_install is the pre-5.12 path only
    if not answer:
        assert packaging.ensured == []
        return
    ((requirements, kwargs),) = packaging.ensured
    assert [str(r) for r in requirements] == ["medai-no-such-distribution>=1.0"]
    assert kwargs["prompt_install"] is False
    assert kwargs["requester"] == "MedAITest"
    assert Path(kwargs["constraints"]).name == "constraints.txt"
