"""Model catalogue (``Resources/model_catalog.json``, schema ``model_catalog.schema.json``) and
downloads into a per-user cache with progress, HTTP Range resume, checksum check and safe
archive extraction. Nothing is downloaded unless :func:`download_model` is called.

Cache: ``models/`` under the per-user MedAI cache (``$MEDAI_CACHE_DIR``, default ``~/.cache/medai``); a model lives in ``<cache>/<id>/`` (the
extracted bundle) next to its archive. A partial download is kept as ``<file>.part`` and resumed
with ``Range: bytes=<done>-`` (a server that ignores Range restarts it from zero).

Checksums: every downloadable entry carries ``sha256`` (preferred) or, only where the publisher
gives none (the MONAI model zoo publishes sha1 in its ``model_info.json``), ``sha1``; the schema
refuses an entry with neither and :func:`download_model` refuses to download one. Whichever digests
are present are all verified before the file is used. A bundle unpacked from such a verified
download is recorded as trusted (:mod:`.bundle_trust`, origin ``catalogue``); imported local
models are not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from MedAICommonLib.downloads import ChecksumError, download, file_digest

from MedAISegLib.inference.bundle_trust import ORIGIN_CATALOGUE, is_trusted, record_trust

__all__ = [
    "ChecksumError",
    "cache_dir",
    "download",
    "download_model",
    "file_digest",
    "find_model",
    "import_local_model",
    "load_catalog",
    "safe_extract",
    "validate",
]

RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
CATALOG_PATH = RESOURCES / "model_catalog.json"
SCHEMA_PATH = RESOURCES / "model_catalog.schema.json"


def cache_dir() -> Path:
    """Per-user model cache folder (created)."""
    from MedAICommonLib.downloads import cache_root

    folder = cache_root() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- schema validation (the subset of JSON Schema the catalogue schema uses) ---------------------
_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int, "boolean": bool}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``instance`` against ``schema`` (type, required, properties, items, enum, pattern,
    minimum, minItems, anyOf); an empty list means valid."""
    errors = []
    kind = schema.get("type")
    if kind and (
        not isinstance(instance, _TYPES[kind]) or (kind in ("number", "integer") and isinstance(instance, bool))
    ):
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


def _verify_archive(entry: dict, archive: Path) -> None:
    """Check every digest the entry gives (sha256 and sha1); deletes the file and raises on a mismatch."""
    for algorithm in ("sha256", "sha1"):
        if entry.get(algorithm) and file_digest(archive, algorithm) != entry[algorithm].lower():
            archive.unlink(missing_ok=True)
            raise ChecksumError(
                f"{archive.name} of {entry['id']} failed the {algorithm} check; it was deleted, download it again."
            )


def _trust_if_bundle(entry: dict, model: Path) -> None:
    from MedAISegLib.inference.bundle import is_bundle

    if is_bundle(model):
        record_trust(model, origin=ORIGIN_CATALOGUE, source=f"{entry['id']} {entry['url']}")


def _model_path(entry: dict, ready: Path, name: str) -> Path:
    """The model file (single-file download) or the bundle folder inside ``ready``."""
    return ready / name if entry.get("archive", "zip") == "none" else _single_root(ready)


def _unpack(entry: dict, archive: Path, folder: Path, name: str) -> Path:
    ready, staging = folder / "model", folder / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    if entry.get("archive", "zip") == "none":
        staging.mkdir(parents=True)
        shutil.copy2(archive, staging / name)
    else:
        safe_extract(archive, staging)
    shutil.rmtree(ready, ignore_errors=True)
    os.replace(staging, ready)
    return _model_path(entry, ready, name)


def download_model(model_id: str, catalog: list[dict] | None = None, progress=None, cache=None) -> Path:
    """Download (if not cached) and unpack a catalogue model; returns the bundle folder or model file.

    The download is checked against the entry's sha256 (and sha1 when given; sha1 alone only where the
    publisher gives no sha256) and size; an unpacked bundle is recorded as trusted. A cached bundle
    that is no longer trusted (edited, or the trust store was reset) is unpacked again from its kept,
    re-verified archive."""
    entry = find_model(model_id, catalog)
    if not (entry.get("sha256") or entry.get("sha1")):
        raise ValueError(
            f"The catalogue entry {entry['id']!r} has no sha256 checksum; refusing an unchecked "
            "download. Add the file's sha256 to the catalogue."
        )
    folder = Path(cache or cache_dir()) / entry["id"]
    name = Path(entry["url"].split("?")[0]).name or "download"
    archive = folder / name
    ready = folder / "model"
    if ready.exists():
        model = _model_path(entry, ready, name)
        from MedAISegLib.inference.bundle import is_bundle

        if not is_bundle(model) or is_trusted(model) or not archive.exists():
            return model
        _verify_archive(entry, archive)
        model = _unpack(entry, archive, folder, name)
        _trust_if_bundle(entry, model)
        return model
    archive = download(
        entry["url"],
        archive,
        sha256=entry.get("sha256"),
        sha1=entry.get("sha1"),
        size_bytes=entry.get("size_bytes"),
        progress=progress,
    )
    _verify_archive(entry, archive)
    model = _unpack(entry, archive, folder, name)
    _trust_if_bundle(entry, model)
    return model


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
