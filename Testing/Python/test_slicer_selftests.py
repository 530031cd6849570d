"""The Slicer self-tests: they run the scenarios pytest runs, skip (never fail) what Slicer's testing mode
cannot install, and the headless runner for people who have Slicer is well-formed."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from MedAICommonLib.application import self_test
from MedAICommonLib.application.self_test import run_scenarios, run_self_test

REPO = Path(__file__).resolve().parents[2]
MODULES = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")
RUNNER = REPO / "Testing" / "Slicer" / "run_selftests.py"
SCRIPT = REPO / "Testing" / "Slicer" / "run_in_slicer.sh"
# What Slicer bundles lacks (its testing mode installs nothing): the modules' requirements.
NOT_IN_SLICER = "torch,numba,skimage,monai,matplotlib,tqdm,yaml,einops"


def self_test_call(module: str) -> ast.Call:
    """The ``run_self_test(...)`` call in ``<Module>Test.runTest``."""
    tree = ast.parse((REPO / module / f"{module}.py").read_text())
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")
    assert [b.id for b in test_class.bases if isinstance(b, ast.Name)] == ["ScriptedLoadableModuleTest"]
    run = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    return next(n for n in ast.walk(run) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_self_test")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_test_runs_its_own_shared_scenario_modules(module):
    call = self_test_call(module)
    assert ast.literal_eval(call.args[0]) == module
    scenario_modules = ast.literal_eval(call.args[1])
    assert scenario_modules
    for dotted in scenario_modules:
        assert dotted.startswith(f"{module}Lib.")
        source = REPO / module / (dotted.replace(".", "/") + ".py")
        functions = [n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)]
        assert any(name.startswith("scenario_") for name in functions), source


def test_common_scenarios_pass_on_a_headless_scene(runtime):
    outcomes = run_self_test(
        "MedAICommon",
        ["MedAICommonLib.synthetic.scenarios"],
        runtime.scene,
        reset=runtime.clear,
        display=lambda line: None,
    )
    assert [o.status for o in outcomes] == ["passed"] * 3
    assert self_test.LAST_OUTCOMES["MedAICommon"] == outcomes


def test_runner_skips_missing_packages_and_reports_real_errors(tmp_path, monkeypatch, runtime):
    (tmp_path / "medai_selftest_sample.py").write_text(
        textwrap.dedent("""
        from MedAICommonLib.application.self_test import ScenarioSkipped

        def scenario_a_needs_an_absent_package(scene):
            import medai_absent_package_for_selftest  # noqa: F401

        def scenario_b_is_wrong(scene):
            assert scene.GetNumberOfNodes() == -1, "wrong on purpose"

        def scenario_c_misses_medai_code(scene):
            import MedAISegLib.no_such_module  # noqa: F401

        def scenario_d_cannot_run_here(scene):
            raise ScenarioSkipped("no PythonSlicer here")

        def scenario_e_works(scene):
            scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
            assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    """)
    )
    (tmp_path / "medai_selftest_unimportable.py").write_text("import medai_absent_package_for_selftest\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lines = []
    outcomes = run_scenarios(
        ["medai_selftest_sample", "medai_selftest_unimportable"],
        runtime.scene,
        reset=runtime.clear,
        display=lines.append,
    )
    status = {o.name: o.status for o in outcomes}
    assert status == {
        "scenario_a_needs_an_absent_package": "skipped",
        "scenario_b_is_wrong": "failed",
        "scenario_c_misses_medai_code": "failed",
        "scenario_d_cannot_run_here": "skipped",
        "scenario_e_works": "passed",
        "<import>": "skipped",
    }
    assert "medai_absent_package_for_selftest" in outcomes[0].message
    assert "wrong on purpose" in outcomes[1].message
    assert len(lines) == len(outcomes)
    with pytest.raises(AssertionError, match="1 passed, 3 skipped, 2 failed"):
        run_self_test(
            "Sample",
            ["medai_selftest_sample", "medai_selftest_unimportable"],
            runtime.scene,
            reset=runtime.clear,
            display=lines.append,
        )


BLOCKED_RUN = """
import importlib.abc, sys
blocked = set(sys.argv[2].split(","))

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from MedAICommonLib.runtime import get_runtime
from MedAICommonLib.application.self_test import run_self_test
runtime = get_runtime()
modules = {"MedAISeg": ["MedAISegLib.scenarios"], "MedAIRegister": ["MedAIRegisterLib.scenarios"],
           "MedAIPlan": ["MedAIPlanLib.scenarios", "MedAIPlanLib.evaluation_scenarios"]}
run_self_test(sys.argv[1], modules[sys.argv[1]], runtime.scene, reset=runtime.clear)
"""


@pytest.mark.parametrize("module", ["MedAISeg", "MedAIRegister", "MedAIPlan"])
def test_self_test_skips_what_slicer_testing_mode_lacks(module):
    """In a Python where the modules' requirements cannot be imported (as in Slicer's testing mode, which
    installs nothing) the self-test passes: what needs them is skipped with the package's name."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, module, NOT_IN_SLICER],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    totals = [line for line in lines if line.startswith(f"{module}: ") and line.endswith(" failed")]
    assert totals == [totals[0]]
    assert totals[0].endswith(" 0 failed")
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    assert skipped
    assert all("needs the Python package" in line for line in skipped)
    if module != "MedAIPlan":  # MedAIPlan's Logic imports torch and matplotlib when it is imported
        assert any(line.startswith("PASSED") for line in lines)


def test_headless_runner_parses_and_names_existing_modules():
    tree = ast.parse(RUNNER.read_text())
    names = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MODULES")
    assert tuple(ast.literal_eval(names)) == MODULES
    for module in MODULES:
        source = ast.parse((REPO / module / f"{module}.py").read_text())
        classes = {n.name for n in source.body if isinstance(n, ast.ClassDef)}
        assert {module, f"{module}Test"} <= classes
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "slicer.util.exit" in calls


def test_shell_script_is_valid_bash_and_refuses_a_missing_slicer(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    done = subprocess.run([str(SCRIPT), str(tmp_path / "no-slicer")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "not an executable Slicer launcher" in done.stderr
    text = SCRIPT.read_text()
    for option in ("--no-main-window", "--testing", "--additional-module-paths", "--python-script"):
        assert option in text


def test_shell_script_passes_the_module_folders_and_reads_the_verdict(tmp_path):
    """A stand-in launcher records its arguments and prints a verdict: the script's exit code follows it."""
    record = tmp_path / "args.txt"
    for verdict, expected in (("PASSED", 0), ("FAILED", 1), ("", 1)):
        launcher = tmp_path / "Slicer"
        launcher.write_text(
            f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n'
            f'[ -n "{verdict}" ] && echo "MEDAI SELFTESTS: {verdict}"\nexit 0\n'
        )
        launcher.chmod(0o755)
        done = subprocess.run(
            [str(SCRIPT), str(tmp_path), "60"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
        )
        assert done.returncode == expected, (verdict, done.stdout, done.stderr)
    args = record.read_text().splitlines()
    start = args.index("--additional-module-paths")
    folders = args[start + 1 : start + 5]
    assert [Path(f).name for f in folders] == list(MODULES)
    assert all((Path(f) / f"{Path(f).name}.py").is_file() for f in folders)
    assert args[args.index("--python-script") + 1] == str(RUNNER)


def test_workflow_downloads_stable_slicer_and_runs_the_same_script():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "slicer-selftests.yml").read_text())
    steps = workflow["jobs"]["selftests"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "stability=release" in commands
    assert "os=linux" in commands
    assert "xvfb-run" in commands
    assert "Testing/Slicer/run_in_slicer.sh" in commands
