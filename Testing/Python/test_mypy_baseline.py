"""The mypy baseline check (Utilities/mypy_baseline.py) fails when a file's error count grows, never otherwise.

mypy runs for real on small generated modules; the check reads its output through ``--mypy-output``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

SCRIPT = Path(__file__).resolve().parents[2] / "Utilities" / "mypy_baseline.py"
_spec = importlib.util.spec_from_file_location("mypy_baseline", SCRIPT)
mypy_baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mypy_baseline)

TWO_ERRORS = 'def f(x: int) -> str:\n    return x\n\n\ny: int = "a"\n'
ONE_ERROR = 'def f(x: int) -> str:\n    return str(x)\n\n\ny: int = "a"\n'
CLEAN = "def f(x: int) -> str:\n    return str(x)\n"


def _mypy_output(folder: Path, sources: dict[str, str]) -> Path:
    """Write the modules, run mypy on them, and return the file holding its output."""
    for name, text in sources.items():
        (folder / name).write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(folder / "cache"), *sources],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    out = folder / f"mypy-{len(list(folder.glob('mypy-*.txt')))}.txt"
    out.write_text(done.stdout)
    return out


def _check(output: Path, baseline: Path, *options: str) -> int:
    return mypy_baseline.main(["--mypy-output", str(output), "--baseline", str(baseline), *options])


def test_errors_are_counted_per_file_from_a_real_mypy_run(tmp_path):
    output = _mypy_output(tmp_path, {"a.py": TWO_ERRORS, "b.py": CLEAN})
    found = mypy_baseline.errors_by_file(output.read_text())
    assert {name: len(lines) for name, lines in found.items()} == {"a.py": 2}
    assert all("error:" in line for line in found["a.py"])


def test_growth_fails_and_is_not_recorded_without_allow_growth(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    first = _mypy_output(tmp_path, {"a.py": ONE_ERROR, "b.py": CLEAN})
    assert _check(first, baseline, "--update", "--allow-growth") == 0
    assert json.loads(baseline.read_text())["errors"] == {"a.py": 1}
    assert _check(first, baseline) == 0

    worse = _mypy_output(tmp_path, {"a.py": TWO_ERRORS, "b.py": TWO_ERRORS})
    assert _check(worse, baseline) == 1
    printed = capsys.readouterr().out
    assert "a.py: 2 mypy errors, baseline 1" in printed
    assert "b.py: 2 mypy errors, baseline 0" in printed
    assert _check(worse, baseline, "--update") == 1
    assert json.loads(baseline.read_text())["errors"] == {"a.py": 1}


def test_fewer_errors_pass_and_update_shrinks_the_baseline(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    before = _mypy_output(tmp_path, {"a.py": TWO_ERRORS})
    assert _check(before, baseline, "--update", "--allow-growth") == 0
    after = _mypy_output(tmp_path, {"a.py": CLEAN})
    assert _check(after, baseline) == 0
    assert "a.py: 2 -> 0" in capsys.readouterr().out
    assert _check(after, baseline, "--update") == 0
    recorded = json.loads(baseline.read_text())
    assert recorded["errors"] == {}
    assert recorded["total"] == 0


def test_the_recorded_baseline_lists_only_lib_files():
    recorded = mypy_baseline.read_baseline()
    assert recorded["total"] == sum(recorded["errors"].values())
    assert all(Path(name).parts[1].endswith("Lib") for name in recorded["errors"])
