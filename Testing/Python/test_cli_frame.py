"""The `medai` frame: a lazy command registry, warnings, reports of failed runs, errors that keep their cause."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedAICommonLib.cli.errors import one_line
from MedAICommonLib.cli.main import add_common_options, main, run_command
from MedAICommonLib.cli.registry import COMMANDS, command_modules
from MedAICommonLib.notices import warn


@pytest.mark.parametrize("module_name", command_modules())
def test_registry_lists_exactly_what_each_module_registers(module_name):
    import importlib

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    importlib.import_module(module_name).register(subparsers, add_common_options)
    registered = {action.dest: action.help for action in subparsers._choices_actions}
    listed = {name: text for name, (module, text) in COMMANDS.items() if module == module_name}
    assert registered == listed


def test_help_imports_no_command_module():
    code = (
        "import sys\nfrom MedAICommonLib.cli.main import build_parser\n"
        "text = build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'monai', 'numba', 'SimpleITK', 'vtk', 'MedAISegLib', 'MedAIPlanLib', "
        "'MedAIRegisterLib') if m in sys.modules]\nprint(heavy)\nprint(text)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]"
    for name in COMMANDS:
        assert name in out


def test_a_command_parses_with_only_its_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["gamma", "--help"])
    assert exit_info.value.code == 0
    assert "--dta-mm" in capsys.readouterr().out


def _args(tmp_path, func, command="check"):
    return argparse.Namespace(
        command=command, func=func, report=str(tmp_path / "r.json"), debug=False, progress_json=False
    )


def test_warnings_reach_stderr_and_the_report(tmp_path, capsys):
    def func(args, report):
        warn("the result is worse than the start")
        warn("the result is worse than the start")
        report.metrics["x"] = 1
        return 0

    assert run_command(_args(tmp_path, func)) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medai check: warning: the result is worse than the start"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["warnings"] == ["the result is worse than the start"]
    assert report["error"] is None
    assert report["exit_code"] == 0
    assert report["metrics"] == {"x": 1}


def test_a_failed_run_still_writes_its_report(tmp_path, capsys):
    report_path = tmp_path / "failed.json"
    code = main(["convert", str(tmp_path / "missing.nrrd"), str(tmp_path / "o.nrrd"), "--report", str(report_path)])
    assert code == 1
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == 1
    assert "missing.nrrd" in report["error"]
    assert capsys.readouterr().err.strip().endswith(report["error"])


def test_multi_line_itk_errors_keep_their_reason():
    image = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    with pytest.raises(RuntimeError) as caught:
        image.SetSpacing((0.0, 1.0, 1.0))
    assert "\n" in str(caught.value)  # ITK puts the reason on a later line
    assert "Zero-valued spacing" in one_line(caught.value)
    assert "\n" not in one_line(caught.value)
    with pytest.raises(RuntimeError) as caught:
        sitk.ReadImage("/nonexistent/ct.nrrd")
    assert "does not exist" in one_line(caught.value)


def test_zero_spacing_file_error_names_the_reason(tmp_path, capsys):
    path = tmp_path / "zero.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nspace directions: (0,0,0) (0,1,0) (0,0,1)\n"
        b"space: left-posterior-superior\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n"
        + np.zeros(8, np.float32).tobytes()
    )
    code = main(["convert", str(path), str(tmp_path / "out.nrrd")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err  # VTK/ITK's own log stays off the terminal
    assert err[0].startswith("medai convert: error:")
    assert not err[0].rstrip().endswith(":")


@pytest.mark.slow
def test_ctrl_c_during_the_optimiser_exits_130_as_cancelled(shared_data, tmp_path):
    import json as json_module
    import signal

    tg119 = shared_data / "rt/pyRadPlan/TG119.mat"
    command = [
        sys.executable,
        "-m",
        "MedAICommonLib.cli",
        "plan",
        "--matrad",
        str(tg119),
        "--target",
        "OuterTarget",
        "--prescription",
        "50",
        "--output-dose",
        str(tmp_path / "dose.nrrd"),
        "--progress-json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith('{"progress"') and json_module.loads(line)["progress"]["stage"] == "optimisation":
                process.send_signal(signal.SIGINT)
                break
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "medai plan: cancelled"
    assert not (tmp_path / "dose.nrrd").exists()
