"""A worker finds MedAI's packages in both of Slicer's layouts, through the PYTHONPATH it is given.

Slicer puts the extension's module folders on ``sys.path`` at run time; ``PythonSlicer`` knows none of
them, and in Slicer there is no editable install. The layouts: the installed extension (the four module
folders merged into one ``qt-scripted-modules`` folder) and a developer's "Additional module paths"
(four separate folders). Here a parent Python plays Slicer: started with ``-S`` (no site-packages
processing, so no editable-install finder), site-packages given as a plain path, the layout's folders
added to ``sys.path``. Its worker child, also ``-S``, gets PythonSlicer's ``slicer`` package; a control
child with the same PYTHONPATH but without the worker's cannot import MedAI at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from pythonslicer import build_pythonslicer

from MedAICommonLib import bridge
from MedAICommonLib.jobs.worker import PACKAGES
from MedAICommonLib.synthetic.phantoms import make_ct_phantom

REPO = Path(__file__).resolve().parents[2]
MODULE_FOLDERS = {
    "MedAICommonLib": "MedAICommon",
    "MedAISegLib": "MedAISeg",
    "MedAIRegisterLib": "MedAIRegister",
    "MedAIPlanLib": "MedAIPlan",
}

PARENT = r"""
import json, os, subprocess, sys
folders, restricted, site, ct, out = sys.argv[1:6]
sys.path[:0] = folders.split(os.pathsep)  # what Slicer does with the module folders
import MedAICommonLib
from MedAICommonLib.jobs.worker import Worker, worker_environment
env = {"PYTHONPATH": os.pathsep.join([restricted, site])}
python = [sys.executable, "-S"]
bare = subprocess.run([*python, "-c", "import MedAICommonLib"], env=dict(os.environ, **env),
                      capture_output=True, text=True)
probe = ("import MedAICommonLib, MedAISegLib, MedAIRegisterLib, MedAIPlanLib, slicer; "
         "print(json.dumps([MedAICommonLib.__file__, MedAISegLib.__file__, MedAIRegisterLib.__file__, "
         "MedAIPlanLib.__file__, slicer.__file__, hasattr(slicer, 'vtkSlicerColorLogic')]))")
seen = subprocess.run([*python, "-c", "import json; " + probe], env=worker_environment(env),
                      capture_output=True, text=True)
result = Worker(["segment", ct, out, "--method", "otsu"], python=python, env=env).start().wait(timeout=300)
print(json.dumps({"parent": MedAICommonLib.__file__, "bare": bare.returncode,
                  "bare_error": (bare.stderr.strip().splitlines() or [""])[-1],
                  "child": json.loads(seen.stdout) if seen.returncode == 0 else seen.stderr,
                  "state": result.state.value, "error": result.error}))
"""


def _copy_package(name: str, target: Path) -> None:
    shutil.copytree(REPO / MODULE_FOLDERS[name] / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))


def installed_layout(root: Path) -> list[Path]:
    """The installed extension: every module folder's contents in one qt-scripted-modules folder."""
    folder = root / "lib" / "Slicer-5.12" / "qt-scripted-modules"
    for name in PACKAGES:
        _copy_package(name, folder)
        shutil.copy2(REPO / MODULE_FOLDERS[name] / f"{MODULE_FOLDERS[name]}.py", folder)
    return [folder]


def additional_module_paths(root: Path) -> list[Path]:
    """A developer's setup: each module folder added to Slicer's "Additional module paths"."""
    folders = []
    for name in PACKAGES:
        folder = root / "MedAI" / MODULE_FOLDERS[name]
        _copy_package(name, folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def pythonslicer(tmp_path_factory):
    return build_pythonslicer(tmp_path_factory.mktemp("pythonslicer"))


@pytest.mark.parametrize("layout", [installed_layout, additional_module_paths], ids=["installed", "module-paths"])
def test_worker_finds_the_packages_through_its_pythonpath(layout, pythonslicer, scene, tmp_path):
    folders = layout(tmp_path / "slicer")
    phantom = make_ct_phantom(shape_kji=(12, 20, 20))
    ct = bridge.save_node(bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct"), tmp_path / "ct.nrrd")
    out = tmp_path / "out.seg.nrrd"
    site = sysconfig.get_paths()["purelib"]
    run = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            PARENT,
            os.pathsep.join(map(str, folders)),
            str(pythonslicer),
            site,
            str(ct),
            str(out),
        ],
        env=dict(os.environ, PYTHONPATH=site),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])

    assert seen["parent"].startswith(str(tmp_path / "slicer"))  # the parent really uses the layout
    assert seen["bare"] != 0
    assert seen["bare_error"] == "ModuleNotFoundError: No module named 'MedAICommonLib'"
    *packages, slicer_file, has_color_logic = seen["child"]
    assert all(p.startswith(str(tmp_path / "slicer")) for p in packages), packages
    assert slicer_file.startswith(str(pythonslicer))
    assert not has_color_logic
    assert seen["state"] == "succeeded", seen["error"]
    node = bridge.load_segmentation(scene, out)
    mask, geometry = bridge.segment_mask(node, bridge.segment_infos(node)[0].name)
    assert geometry.same_grid(phantom.geometry)
    assert mask.any()
