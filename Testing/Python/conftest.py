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


@pytest.fixture(autouse=True)
def isolated_trust_store(tmp_path, monkeypatch):
    """Every test records bundle trust in its own store, never in the user's (returns the store's path)."""
    store = tmp_path / "trust" / "trusted_bundles.json"
    monkeypatch.setenv("MEDAI_TRUST_STORE", str(store))
    return store


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (or $MEDAI_SHARED_DATA).

    Absent: the tests that need it are skipped on a developer's machine, and fail in CI (``CI=true``),
    where a missing folder must not turn the suite green by skipping.
    """
    if not SHARED_DATA.exists():
        message = f"shared data not found at {SHARED_DATA} (set MEDAI_SHARED_DATA)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def device():
    """The torch device GPU-capable code is tested on: CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
