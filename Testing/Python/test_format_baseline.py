"""The format check (Utilities/format_check.py): real ``ruff format --check`` runs, and a baseline that only shrinks."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

if shutil.which("ruff") is None and importlib.util.find_spec("ruff") is None:
    pytest.skip("ruff is not installed (test extra)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "Utilities" / "format_check.py"
_spec = importlib.util.spec_from_file_location("format_check", SCRIPT)
format_check = importlib.util.module_from_spec(_spec)
sys.modules["format_check"] = format_check
_spec.loader.exec_module(format_check)

UNFORMATTED = "def f( a,b ):\n    return {'a':a,\n      'b':b}\n"
FORMATTED = 'def f(a, b):\n    return {"a": a, "b": b}\n'


def test_ruff_finds_the_unformatted_file_only(tmp_path):
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text(UNFORMATTED)
    good.write_text(FORMATTED)
    found = format_check.unformatted([str(bad), str(good)])
    assert {Path(p).name for p in found} == {"bad.py"}


def test_every_listed_file_exists_and_still_needs_formatting():
    """A listed file that was deleted or formatted must leave the list: the baseline only shrinks."""
    listed = format_check.read_baseline()
    assert listed, "the baseline file is missing or empty; if every file is formatted, delete this test's premise"
    missing = sorted(p for p in listed if not (REPO / p).is_file())
    assert missing == []
    assert format_check.unformatted(sorted(listed)) == listed


def test_no_new_file_joins_the_baseline():
    """The list holds only files that predate the formatter; new modules are formatted from the start."""
    listed = format_check.read_baseline()
    assert len(listed) <= 31
    assert not any(Path(p).name.startswith("test_format") for p in listed)
