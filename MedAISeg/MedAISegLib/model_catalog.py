"""Model catalogue (``Resources/model_catalog.json``, schema ``model_catalog.schema.json``) and
downloads into a per-user cache with progress, HTTP Range resume, checksum check and safe
archive extraction. Nothing is downloaded unless :func:`download_model` is called.

Cache: ``$MEDAI_CACHE_DIR`` or ``~/.cache/medai/models``; a model lives in ``<cache>/<id>/`` (the
extracted bundle) next to its archive. A partial download is kept as ``<file>.part`` and resumed
with ``Range: bytes=<done>-`` (a server that ignores Range restarts it from zero).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
CATALOG_PATH = RESOURCES / "model_catalog.json"
SCHEMA_PATH = RESOURCES / "model_catalog.schema.json"
CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A downloaded file does not have the catalogue's checksum or size."""


def cache_dir() -> Path:
    """Per-user model cache folder (created)."""
    folder = Path(os.environ.get("MEDAI_CACHE_DIR") or Path.home() / ".cache" / "medai" / "models")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- schema validation (the subset of JSON Schema the catalogue schema uses) ---------------------
_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int, "boolean": bool}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``instance`` against ``schema`` (type, required, properties, items, enum, pattern,
    minimum, minItems, anyOf); an empty list means valid."""
    errors = []
    kind = schema.get("type")
    if kind and (not isinstance(instance, _TYPES[kind]) or (kind in ("number", "integer") and isinstance(instance, bool))):
        return [f"{path}: expected {kind}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "pattern" in schema and isinstance(instance, str) and not re.search(schema["pattern"], instance):
        errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(instance, (int, float)) and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        errors += [f"{path}: missing '{key}'" for key in schema.get("required", []) if key not in instance]
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                errors += validate(instance[key], sub, f"{path}.{key}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{path}: needs at least {schema['minItems']} items")
        if "items" in schema:
            for index, item in enumerate(instance):
                errors += validate(item, schema["items"], f"{path}[{index}]")
    if "anyOf" in schema and all(validate(instance, option, path) for option in schema["anyOf"]):
        errors.append(f"{path}: matches none of the alternatives {schema['anyOf']}")
    return errors


def load_catalog(path=CATALOG_PATH, schema_path=SCHEMA_PATH) -> list[dict]:
    """The catalogue's model entries, validated against the schema (ValueError listing the errors)."""
    data = json.loads(Path(path).read_text())
    errors = validate(data, json.loads(Path(schema_path).read_text()))
    if errors:
        raise ValueError(f"Model catalogue {path} is invalid: " + "; ".join(errors[:5]))
    return data["models"]


def find_model(model_id: str, catalog: list[dict] | None = None) -> dict:
    """The catalogue entry with ``id`` (ValueError listing the ids otherwise)."""
    catalog = load_catalog() if catalog is None else catalog
    for entry in catalog:
        if entry["id"] == model_id:
            return entry
    raise ValueError(f"No model {model_id!r} in the catalogue; available: {', '.join(e['id'] for e in catalog)}")


# --- download --------------------------------------------------------------------------------------
def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, destination, sha256: str | None = None, size_bytes: int | None = None,
             sha1: str | None = None, progress=None, timeout: float = 60.0) -> Path:
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
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - catalogue URLs
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
        problem = "sha256 does not match the catalogue"
    elif sha1 and not sha256 and file_digest(part, "sha1") != sha1.lower():
        problem = "sha1 does not match the catalogue"
    if problem:
        part.unlink()
        raise ChecksumError(f"Download of {url} failed the check ({problem}); it was deleted, try again.")
    os.replace(part, destination)
    return destination


# --- archives --------------------------------------------------------------------------------------
def _safe_member(name: str, target: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"Refusing to extract '{name}': the archive points outside its folder.")
    resolved = (target / pure).resolve()
    if target.resolve() not in resolved.parents and resolved != target.resolve():
        raise ValueError(f"Refusing to extract '{name}': the archive points outside its folder.")
    return resolved


def safe_extract(archive, target) -> Path:
    """Extract a ``.zip`` or ``.tar(.gz)`` into ``target``, refusing absolute paths, ``..``, and
    links (checked for every member before anything is written)."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                _safe_member(member.filename, target)
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ValueError(f"Refusing to extract the symbolic link '{member.filename}'.")
            for member in members:
                zf.extract(member, target)
        return target
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _safe_member(member.name, target)
                if member.issym() or member.islnk() or member.isdev():
                    raise ValueError(f"Refusing to extract the link or device '{member.name}'.")
            for member in members:
                if hasattr(tarfile, "data_filter"):
                    tf.extract(member, target, filter="data")
                else:
                    tf.extract(member, target)
        return target
    raise ValueError(f"{archive} is neither a zip nor a tar archive.")


def _single_root(folder: Path) -> Path:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def download_model(model_id: str, catalog: list[dict] | None = None, progress=None, cache=None) -> Path:
    """Download (if not cached) and unpack a catalogue model; returns the bundle folder or model file."""
    entry = find_model(model_id, catalog)
    folder = Path(cache or cache_dir()) / entry["id"]
    ready = folder / "model"
    if ready.exists():
        return _single_root(ready)
    name = Path(entry["url"].split("?")[0]).name or "download"
    archive = download(entry["url"], folder / name, sha256=entry.get("sha256"), sha1=entry.get("sha1"),
                       size_bytes=entry.get("size_bytes"), progress=progress)
    staging = folder / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if entry.get("archive", "zip") == "none":
        staging.mkdir(parents=True)
        shutil.copy2(archive, staging / name)
    else:
        safe_extract(archive, staging)
    os.replace(staging, ready)
    return _single_root(ready)


def import_local_model(path, model_id: str | None = None, cache=None) -> Path:
    """Copy a local model file or bundle folder (or unpack an archive) into the cache; returns it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; choose a model file, bundle folder or archive.")
    model_id = model_id or re.sub(r"[^a-z0-9_.-]+", "_", path.name.lower())
    ready = Path(cache or cache_dir()) / model_id / "model"
    shutil.rmtree(ready, ignore_errors=True)
    if path.is_dir():
        shutil.copytree(path, ready)
    elif zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        safe_extract(path, ready)
    else:
        ready.mkdir(parents=True)
        shutil.copy2(path, ready / path.name)
        for card in (path.with_name(path.name + ".json"), path.with_suffix(".json"), path.parent / "model_card.json"):
            if card.exists() and card != path:
                shutil.copy2(card, ready / card.name)
        return ready / path.name
    return _single_root(ready)
