"""The install check (Testing/check_install.py) leaves out exactly the modules that need Slicer's Qt."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import check_install  # noqa: E402


def test_every_module_the_install_check_imports_imports_without_slicer_qt():
    """CI's first stage imports these in a user's environment; a Qt-only module among them fails it there."""
    names = check_install.all_modules()
    assert len(names) > 150
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            failures.append(f"{name}: {error}")
    assert failures == []


def test_the_qt_panel_modules_are_left_to_slicer():
    names = set(check_install.all_modules())
    for module in ("slicer_widget", "batch_section"):
        assert f"MedAICommonLib.application.{module}" not in names
        assert check_install.needs_qt(f"MedAICommonLib.application.{module}")
    assert not check_install.needs_qt("MedAICommonLib.application.self_test")
