"""The cohort manifest: a CSV with a header, one row per case; the column ``id`` names the case.

Every other column is an input: a path (volume file, DICOM folder, structure set, ...) or a plain value
(a target name, a threshold). A relative value that names an existing file or folder beside the manifest,
or that looks like a path (it has a folder separator or a file suffix), resolves against the manifest's
folder, so a manifest and its data can move together.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}$")


@dataclass
class Case:
    """One row of the manifest: ``id`` and its input ``values`` by column (paths made absolute)."""

    id: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    """The cases of a cohort, the manifest's ``path`` and its input ``columns`` (``id`` excluded)."""

    path: Path
    columns: list[str]
    cases: list[Case]


def _resolve(value: str, folder: Path) -> str:
    text = value.strip()
    if not text:
        return text
    path = Path(text).expanduser()
    if path.is_absolute():
        return str(path)
    beside = folder / path
    if beside.exists() or "/" in text or "\\" in text or _SUFFIX.search(text):
        return str(beside.resolve())
    return text


def read_manifest(path) -> Manifest:
    """Read and check the manifest at ``path``.

    Raises ``ValueError`` when the file is missing or empty, has no ``id`` column, repeats a column, or an
    id is empty, repeated, or not usable as a folder name (letters, digits, ``.``, ``_``, ``-``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Manifest {path} not found: give a CSV file with an 'id' column and one row per case.")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"Manifest {path} is empty: it needs a header with an 'id' column and one row per case.")
    header = [name.strip() for name in rows[0]]
    if "id" not in header:
        raise ValueError(
            f"Manifest {path} has no 'id' column (its columns: {', '.join(header)}); add one that names each case."
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated or "" in header:
        raise ValueError(
            f"Manifest {path}: every column needs its own name (repeated or empty: "
            f"{', '.join(repeated) or 'an empty name'})."
        )
    if len(rows) < 2:
        raise ValueError(f"Manifest {path} lists no case: add one row per case under the header.")
    cases, seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"Manifest {path} line {line} has {len(row)} values for {len(header)} columns.")
        record = dict(zip(header, row))
        case_id = record.pop("id").strip()
        if not _SAFE_ID.match(case_id):
            raise ValueError(
                f"Manifest {path} line {line}: the id {case_id!r} cannot name a results folder; use "
                "letters, digits, '.', '_' and '-' (starting with a letter or digit)."
            )
        if case_id in seen:
            raise ValueError(
                f"Manifest {path}: the id {case_id!r} is used twice (lines {seen[case_id]} and {line}); "
                "each case needs its own id."
            )
        seen[case_id] = line
        cases.append(Case(case_id, {name: _resolve(value, path.parent) for name, value in record.items()}))
    return Manifest(path=path.resolve(), columns=[name for name in header if name != "id"], cases=cases)
