"""Shared pytest fixtures: a fresh headless MRML scene per test, shared data paths, markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from MedAICommonLib.runtime import create_runtime

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDAI_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def runtime():
    """A new headless runtime (scene + Slicer logics); cleared after the test."""
    rt = create_runtime()
    yield rt
    rt.clear()


@pytest.fixture
def scene(runtime):
    """A new MRML scene wired to Slicer's logics."""
    return runtime.scene


@pytest.fixture
def shared_data():
    """Path to ../shared/data; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
