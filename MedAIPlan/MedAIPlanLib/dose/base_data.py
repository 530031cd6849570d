"""matRad's generic 6 MV photon base data (``photons_Generic.mat``): where it is cached, how to fetch it.

The file is not shipped with MedAI (matRad's licence has changed between releases; see
README). On request, ``medai download-base-data`` fetches it from matRad's repository at a
pinned commit into the per-user cache, checked against a known SHA-256.
"""

from __future__ import annotations

from pathlib import Path

from MedAICommonLib.downloads import cache_root, download

MATRAD_COMMIT = "c014dc82d620bace0836eb8cc420fe33c19cdb87"
MACHINE_URL = f"https://raw.githubusercontent.com/e0404/matRad/{MATRAD_COMMIT}/matRad/basedata/photons_Generic.mat"
MACHINE_SHA256 = "171048cf03dcfff2672ac0d0c0dd1bfde4c5c70ce68a08afad0c6c2c83679d6a"
MACHINE_SIZE_BYTES = 2259100


def cached_machine_path() -> Path:
    """Where the downloaded base data lives: ``basedata/`` under the per-user MedAI cache root."""
    return cache_root() / "basedata" / "photons_Generic.mat"


def download_machine(url: str = MACHINE_URL, destination=None, progress=None) -> Path:
    """Download the base data (resumable, size- and SHA-256-checked); returns its path."""
    return download(
        url,
        destination or cached_machine_path(),
        sha256=MACHINE_SHA256,
        size_bytes=MACHINE_SIZE_BYTES,
        progress=progress,
    )
