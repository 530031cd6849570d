"""Checked downloads shared by MedAI's modules (models, base data): resumable, size- and hash-verified.

Nothing here runs unless a user asks for a download. A partial download is kept as
``<file>.part`` and resumed with ``Range: bytes=<done>-`` (a server that ignores Range restarts it
from zero); the finished file is checked before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A downloaded file does not have the expected checksum or size."""


def cache_root() -> Path:
    """The per-user MedAI cache: ``$MEDAI_CACHE_DIR``, else ``~/.cache/medai``.

    Everything MedAI downloads lives under it, one folder per kind: ``models/`` (the model
    catalogue), ``basedata/`` (the photon machine data). Not created here.
    """
    return Path(os.environ.get("MEDAI_CACHE_DIR") or Path.home() / ".cache" / "medai").expanduser()


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    destination,
    sha256: str | None = None,
    size_bytes: int | None = None,
    sha1: str | None = None,
    progress=None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``destination``, resuming ``destination.part`` with an HTTP Range request.

    ``progress(done_bytes, total_bytes or None)`` is called as data arrives. The finished file is
    checked against ``size_bytes``/``sha256`` (or ``sha1``) before it is renamed into place; on a
    mismatch the partial file is deleted and :class:`ChecksumError` raised.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URLs the user asked for
    except urllib.error.HTTPError as error:
        if error.code == 416 and size_bytes and done == size_bytes:  # already complete
            response = None
        else:
            raise
    if response is not None:
        with response:
            resumed = done and response.status == 206
            if not resumed:
                done = 0
            length = response.headers.get("Content-Length")
            total = (done + int(length)) if length is not None else size_bytes
            with open(part, "ab" if resumed else "wb") as handle:
                while block := response.read(CHUNK):
                    handle.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
    actual = part.stat().st_size
    problem = None
    if size_bytes is not None and actual != size_bytes:
        problem = f"size {actual} bytes, expected {size_bytes}"
    elif sha256 and file_digest(part, "sha256") != sha256.lower():
        problem = "sha256 does not match the expected value"
    elif sha1 and not sha256 and file_digest(part, "sha1") != sha1.lower():
        problem = "sha1 does not match the expected value"
    if problem:
        part.unlink()
        raise ChecksumError(f"Download of {url} failed the check ({problem}); it was deleted, try again.")
    os.replace(part, destination)
    return destination
