"""Content digests and the key of each case-step: what makes a re-run skip finished work and redo changes.

A case-step's key is the SHA-256 of its command, its ``args`` as written in the pipeline (placeholders
unexpanded, so moving the output folder changes nothing), the content digest of every manifest value it
uses (a file's SHA-256, a folder's files' digests, or the text itself) and the keys of the earlier steps
it uses. A step whose parameters or inputs change gets a new key, and so do the steps that use it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

KEY_VERSION = 1
_CHUNK = 1 << 20
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_digest(path) -> str:
    """SHA-256 of the file at ``path``, cached per process by (path, mtime, size)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key in _cache:
            return _cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _lock:
        _cache[key] = value
    return value


def folder_digest(path) -> str:
    """SHA-256 over the relative names and content digests of every file under the folder ``path``."""
    path = Path(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{file_digest(item)}\n".encode())
    return digest.hexdigest()


def value_digest(value: str) -> str:
    """Digest of a manifest value: its content when it names a file or folder, else its text.

    A path that does not exist is digested as text; the step that reads it then fails with the
    command's own error, and the case is recorded as failed.
    """
    path = Path(value) if value else None
    if path is not None and path.is_file():
        return "file:" + file_digest(path)
    if path is not None and path.is_dir():
        return "folder:" + folder_digest(path)
    return "text:" + hashlib.sha256(value.encode()).hexdigest()


def step_key(command: str, args: list[str], column_digests: dict[str, str], step_keys: dict[str, str]) -> str:
    """The key of a case-step from its command, raw ``args``, used columns' digests and used steps' keys."""
    payload = {
        "version": KEY_VERSION,
        "command": command,
        "args": list(args),
        "columns": dict(sorted(column_digests.items())),
        "steps": dict(sorted(step_keys.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
