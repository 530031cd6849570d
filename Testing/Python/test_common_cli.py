"""The `medai` command frame: info, convert, dicom-import, demo, reports and one-line errors."""

import json

import numpy as np
import pytest

from MedAICommonLib.cli.main import main

from dicom_writer import write_ct_series


def test_info_prints_versions_and_devices(capsys, tmp_path):
    assert main(["info", "--report", str(tmp_path / "r.json")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"]["slicer-core"].split(".")[:2] in (["5", "12"], ["5", "13"])
    assert data["devices"]["cpu"] is True
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report) >= {"command", "inputs", "outputs", "parameters", "metrics", "timings_s", "versions", "device"}


def test_convert_and_dicom_import(tmp_path, shared_data):
    out = tmp_path / "anat.nrrd"
    assert main(["convert", str(shared_data / "registration/monai-testing-data/anatomical.nii"), str(out)]) == 0
    assert out.read_bytes().startswith(b"NRRD")
    write_ct_series(tmp_path / "series", np.full((4, 6, 6), 40.0))
    report = tmp_path / "dicom.json"
    assert main(["dicom-import", str(tmp_path / "series"), str(tmp_path / "ct.nii.gz"), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["inputs"]["files"] == 4


def test_bad_input_gives_one_line_error_and_nonzero_exit(tmp_path, capsys):
    code = main(["convert", str(tmp_path / "missing.nrrd"), str(tmp_path / "o.nrrd")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert "missing.nrrd" in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.slow  # the demo (about 12 s); CI's install check runs it on every push
def test_demo_writes_overview_and_report(tmp_path):
    report = tmp_path / "demo.json"
    assert main(["demo", "--output", str(tmp_path / "demo"), "--report", str(report)]) == 0
    overview = tmp_path / "demo" / "overview.png"
    assert overview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(report.read_text())
    assert data["parameters"]["steps"][0] == "inputs"
    assert (tmp_path / "demo" / "inputs" / "phantom_ct.nrrd").exists()
