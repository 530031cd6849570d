"""A command's fixed start-up imports nothing heavy: ``medai COMMAND --help`` and a refused input file.

Each check runs every registered command in one fresh interpreter and records, after each command, which heavy
libraries had appeared in ``sys.modules``: a structural check of the imports, not a timing (the figures are
``bench/bench_cli_startup.py``'s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from MedAICommonLib.cli.inputs import input_path, require_inputs, require_output_folder
from MedAICommonLib.cli.registry import COMMANDS

#: what a command may import only once its inputs are checked
HEAVY = (
    "torch",
    "monai",
    "numba",
    "dask",
    "distributed",
    "SimpleITK",
    "vtkmodules",
    "slicer",
    "scipy",
    "matplotlib",
    "pydicom",
    "onnx",
    "onnxruntime",
)


def _bad_input(missing: str, here: str) -> dict[str, list[str]]:
    """Arguments of every command that reads a file, naming a missing input (``demo``: a folder inside a file)."""
    return {
        "demo": ["--output", f"{here}/demo"],
        "convert": [f"{missing}/in.nrrd", "out.nrrd"],
        "dicom-import": [f"{missing}/series", "out.nrrd"],
        "denoise": [f"{missing}/ct.nrrd", "out.nrrd", "--method", "nlm"],
        "segment": [f"{missing}/ct.nrrd", "out.seg.nrrd", "--method", "otsu"],
        "evaluate": [f"{missing}/ref.seg.nrrd", f"{missing}/pred.seg.nrrd"],
        "lesions": [f"{missing}/lesions.seg.nrrd"],
        "explain": [f"{missing}/ct.nrrd", "--model", f"{missing}/model.ts", "--output", "saliency.nrrd"],
        "train": ["--images", f"{missing}/ct.nrrd", "--labels", f"{missing}/l.nrrd", "--output", "bundle"],
        "fine-tune": [f"{missing}/ct.nrrd", f"{missing}/s.seg.nrrd", "--model", f"{missing}/m.ts", "--output", "b"],
        "export": [f"{missing}/bundle", "--sample", f"{missing}/ct.nrrd", "--fp16"],
        "register": [f"{missing}/fixed.nrrd", f"{missing}/moving.nrrd", "--output-transform", "t.h5"],
        "icp": [f"{missing}/fixed.seg.nrrd:liver", f"{missing}/moving.vtk", "--output-transform", "t.h5"],
        "landmarks": [f"{missing}/fixed.mrk.json", f"{missing}/moving.mrk.json", "--output-transform", "t.h5"],
        "dose": [f"{missing}/ct.nrrd", f"{missing}/s.seg.nrrd", "--target", "PTV", "--output-dose", "d.nrrd"],
        "plan": [
            f"{missing}/ct.nrrd",
            f"{missing}/s.seg.nrrd",
            "--target",
            "PTV",
            "--prescription",
            "60",
            "--output-dose",
            "d.nrrd",
        ],
        "dvh": [f"{missing}/dose.nrrd", f"{missing}/s.seg.nrrd"],
        "gamma": [f"{missing}/ref.nrrd", f"{missing}/eval.nrrd"],
        "isodose": [f"{missing}/dose.nrrd", "isodose"],
        "rt-import": [f"{missing}/rtdose.dcm", "--output-dir", "rt"],
        "rt-export": ["rt", "--dose", f"{missing}/dose.nrrd"],
        "contour-qa": [f"{missing}/dose.nrrd", f"{missing}/ref.seg.nrrd", f"{missing}/cand.seg.nrrd"],
        "batch": [f"{missing}/cohort.csv", "--pipeline", "segmentation-cohort", "--output", "cohort"],
    }


_PROBE = textwrap.dedent("""
    import contextlib, io, json, sys
    from MedAICommonLib.cli.main import main
    calls, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    rows = []
    for argv in calls:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code
        rows.append({"argv": argv, "code": code, "stderr": err.getvalue().strip(),
                     "heavy": [m for m in heavy if m in sys.modules]})
    print(json.dumps(rows))
""")


def _probe(calls: list[list[str]], cwd) -> list[dict]:
    """Run ``medai ARGV`` for each call in one fresh interpreter; per call: exit code, stderr, heavy modules."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(calls), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_command_help_imports_nothing_heavy(tmp_path):
    rows = _probe([["--help"]] + [[name, "--help"] for name in COMMANDS], tmp_path)
    assert len(rows) == len(COMMANDS) + 1
    for row in rows:
        assert row["code"] == 0, row
        assert row["heavy"] == [], f"medai {' '.join(row['argv'])} imported {row['heavy']}"


def test_a_missing_input_is_refused_before_any_heavy_import(tmp_path):
    missing = tmp_path / "missing"
    bad = _bad_input(str(missing), __file__)
    # every command that reads a file is covered; info and download-base-data read none
    assert set(bad) == set(COMMANDS) - {"info", "download-base-data"}
    rows = _probe([[name, *argv] for name, argv in bad.items()], tmp_path)
    for (name, _), row in zip(bad.items(), rows):
        assert row["code"] == 1, row
        assert row["stderr"].startswith(f"medai {name}: error: "), row
        expected = __file__ if name == "demo" else str(missing)
        assert expected in row["stderr"], row
        assert row["heavy"] == [], f"medai {name} with a missing input imported {row['heavy']}"
    assert not (tmp_path / "demo").exists()


def test_input_checks(tmp_path):
    present = tmp_path / "ct.nrrd"
    present.write_bytes(b"x")
    require_inputs(present, tmp_path, None)  # files, folders; options not given are skipped
    (tmp_path / "s.seg.nrrd").write_bytes(b"x")
    require_inputs(f"{tmp_path}/s.seg.nrrd:liver")
    assert input_path(f"{tmp_path}/s.seg.nrrd:liver") == f"{tmp_path}/s.seg.nrrd"
    assert input_path(f"{tmp_path}/S.SEG.NRRD:a:b") == f"{tmp_path}/S.SEG.NRRD"  # segment names may hold ":"
    assert input_path("ct.nrrd") == "ct.nrrd"
    with pytest.raises(ValueError, match="File not found: .*absent.seg.nrrd; check the path"):
        require_inputs(present, f"{tmp_path}/absent.seg.nrrd:liver")
    assert require_output_folder(tmp_path / "a" / "b").is_dir()
    with pytest.raises(ValueError, match="a file of that name is in the way"):
        require_output_folder(present / "out")


def test_native_logs_are_quiet_in_a_command_and_restored_after():
    # a fresh interpreter: VTK and SimpleITK are imported (by the "command") only inside the block
    code = textwrap.dedent("""
        import sys
        from MedAICommonLib.cli.native_logs import quiet_native_logs
        assert "vtkmodules" not in sys.modules and "SimpleITK" not in sys.modules
        with quiet_native_logs():
            import vtk, SimpleITK as sitk
            inside = (vtk.vtkOutputWindow.GetInstance().GetClassName(), sitk.ProcessObject.GetGlobalWarningDisplay())
        after = (vtk.vtkOutputWindow.GetInstance().GetClassName(), sitk.ProcessObject.GetGlobalWarningDisplay())
        with quiet_native_logs():  # both already imported: silenced at once
            again = (vtk.vtkOutputWindow.GetInstance().GetClassName(), sitk.ProcessObject.GetGlobalWarningDisplay())
        with quiet_native_logs(False):
            debug = vtk.vtkOutputWindow.GetInstance().GetClassName()
        finders = [type(f).__name__ for f in sys.meta_path]
        print(inside, after, again, debug, "_OnImport" in finders)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == (
        "('vtkStringOutputWindow', False) ('vtkOutputWindow', True) ('vtkStringOutputWindow', False) "
        "vtkOutputWindow False"
    ), done.stdout + done.stderr


def test_written_out_choices_match_the_algorithms():
    from MedAIRegisterLib import commands
    from MedAIRegisterLib.intensity import intensity_backends, intensity_registration
    from MedAIRegisterLib.pointsets import icp, icp_starts, landmarks
    from MedAISegLib import training_commands
    from MedAISegLib.inference import export

    assert commands.ICP_METRICS == icp.METRICS
    assert commands.ICP_TRANSFORMS == icp.TRANSFORMS
    assert commands.MULTI_STARTS == icp_starts.MULTI_STARTS
    assert tuple(icp.UNITS) == commands.UNITS
    assert commands.LANDMARK_METHODS == landmarks.METHODS
    assert tuple(intensity_registration.PRESETS) == commands.PRESETS
    assert tuple(intensity_registration.METRICS) == commands.METRIC_CHOICES
    assert commands.DEVICES == intensity_backends.DEVICES
    assert training_commands.NETWORKS == export.NETWORKS
