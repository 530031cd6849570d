"""Which MONAI bundles the user has trusted to run: their config files can execute Python.

A bundle's ``configs/*.json|yaml`` may hold ``$``-expressions (``"$import os; os.system(...)"``)
that ``monai.bundle.ConfigParser`` evaluates, and may import Python files shipped in the bundle.
So MedAI runs a bundle only when this store says the user (or a checked catalogue download)
trusted *exactly this content at exactly this place*: an entry is keyed by the bundle's resolved
path and holds the sha256 :func:`code_digest` of every file under ``configs/`` plus every ``*.py``
file in the bundle. Editing a config (or moving the bundle) makes it untrusted again. Weights
(``models/model.pt``) are not part of the digest: they are data, read with ``weights_only=True``.
TorchScript models with a MedAI model card run no config code and need no trust.

Store: a JSON file, ``$MEDAI_TRUST_STORE`` if set (tests), else ``$MEDAI_CONFIG_DIR/trusted_bundles.json``,
else ``${XDG_CONFIG_HOME:-~/.config}/medai/trusted_bundles.json``; written atomically (temp + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

ORIGIN_CATALOGUE = "catalogue"
ORIGIN_LOCAL = "local"


def trust_store_path() -> Path:
    """Path of the per-user trust store (not created here)."""
    if os.environ.get("MEDAI_TRUST_STORE"):
        return Path(os.environ["MEDAI_TRUST_STORE"])
    if os.environ.get("MEDAI_CONFIG_DIR"):
        return Path(os.environ["MEDAI_CONFIG_DIR"]) / "trusted_bundles.json"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "medai" / "trusted_bundles.json"


def _key(bundle) -> str:
    return str(Path(bundle).expanduser().resolve())


def code_files(bundle) -> list[Path]:
    """Files whose content decides what the bundle's configs execute: ``configs/**`` and ``**/*.py``."""
    bundle = Path(bundle)
    files = {p for p in (bundle / "configs").rglob("*") if p.is_file()} if (bundle / "configs").is_dir() else set()
    files |= {p for p in bundle.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(files)


def code_digest(bundle) -> str:
    """sha256 over the relative path and content of each of :func:`code_files`, in sorted order."""
    bundle = Path(bundle)
    digest = hashlib.sha256()
    for path in code_files(bundle):
        digest.update(path.relative_to(bundle).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _read_store() -> dict:
    path = trust_store_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # an unreadable store trusts nothing
    return data.get("bundles", {}) if isinstance(data, dict) else {}


def _write_store(entries: dict) -> None:
    path = trust_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".trusted_bundles.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump({"version": 1, "bundles": entries}, handle, indent=2)
    os.replace(tmp, path)


def trust_info(bundle) -> dict:
    """What a confirmation prompt shows: ``path`` (resolved), ``origin`` (``catalogue`` or ``local``),
    ``source`` (catalogue id/URL or None), ``digest`` (current sha256 of the code files), ``trusted``
    (recorded with this very digest), ``changed`` (trusted before, but the configs changed since)
    and ``trusted_at`` (ISO UTC time of the recorded trust or None)."""
    key = _key(bundle)
    digest = code_digest(bundle)
    entry = _read_store().get(key)
    trusted = bool(entry) and entry.get("digest") == digest
    return {
        "path": key,
        "origin": entry.get("origin", ORIGIN_LOCAL) if trusted else ORIGIN_LOCAL,
        "source": entry.get("source") if trusted else None,
        "digest": digest,
        "trusted": trusted,
        "changed": bool(entry) and not trusted,
        "trusted_at": entry.get("trusted_at") if trusted else None,
    }


def is_trusted(bundle) -> bool:
    """True when the bundle's current code digest is recorded as trusted at its resolved path."""
    return trust_info(bundle)["trusted"]


def record_trust(bundle, origin: str = ORIGIN_LOCAL, source: str | None = None) -> dict:
    """Record the bundle's current content as trusted (replacing an older entry); returns :func:`trust_info`."""
    entries = _read_store()
    entries[_key(bundle)] = {
        "digest": code_digest(bundle),
        "origin": origin,
        "source": source,
        "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_store(entries)
    return trust_info(bundle)


def revoke_trust(bundle) -> None:
    """Forget the bundle (it must be trusted again before it runs)."""
    entries = _read_store()
    if entries.pop(_key(bundle), None) is not None:
        _write_store(entries)


def require_trusted(bundle) -> dict:
    """:func:`trust_info` of a trusted bundle; ``ValueError`` naming the bundle and how to trust it otherwise."""
    info = trust_info(bundle)
    if info["trusted"]:
        return info
    why = "its configs changed since it was trusted" if info["changed"] else "it did not come from the catalogue"
    raise ValueError(
        f"The MONAI bundle {info['path']} is not trusted ({why}); bundle configs can run Python code, so it "
        "runs only after you trust it. Check where it came from, then confirm the trust prompt in the MedAISeg "
        "panel, add --trust-bundle to the medai command ('medai segment', 'medai export'), or call MedAISegLogic.trust_bundle(path) "
        f"(configs sha256 {info['digest'][:16]}...)."
    )
