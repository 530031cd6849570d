"""A cohort manifest built from a folder of cases, for the panel's Batch section.

Two layouts are understood, checked in this order:

- **One image file per case**: the folder holds volume files (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``, ``.seg.nrrd``). Each file is a case; its id is the file name without the suffix and
  its only column is ``image``.
- **One sub-folder per case**: the case id is the sub-folder's name. Each volume file in it is a column
  named after the file without its suffix (``case07/ct.nii.gz`` and ``case07/label.seg.nrrd`` give the
  columns ``ct`` and ``label``); a sub-folder without volume files (a DICOM series) is itself the column
  ``image``. Every sub-folder must give the same columns, so a pipeline's ``{case.COLUMN}`` exists for all.

Names starting with ``.`` are skipped, and so is any folder passed in ``exclude`` (the results folder when
it lies inside the case folder). Characters a case id cannot hold (anything but letters, digits, ``.``,
``_`` and ``-``) become ``_``. Paths in the manifest are absolute.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File suffixes read as volumes (longest first, so ``.seg.nrrd`` wins over ``.nrrd``)."""


def _volume_stem(path: Path) -> str | None:
    """The file name without its volume suffix, or None when ``path`` is not a volume file."""
    lower = path.name.lower()
    suffix = next((s for s in VOLUME_SUFFIXES if lower.endswith(s)), None)
    return path.name[: -len(suffix)] if suffix and path.is_file() else None


def _case_id(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")
    if not text:
        raise ValueError(f"{name!r} cannot name a case: use letters or digits in the file or folder name.")
    return text


def _entries(folder: Path, exclude: list[Path]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.resolve() not in exclude)


def _subfolder_case(folder: Path) -> dict[str, str]:
    volumes = {}
    for path in sorted(folder.iterdir()):
        stem = _volume_stem(path)
        if stem and not path.name.startswith("."):
            if stem in volumes:
                raise ValueError(f"{folder} holds two volumes named {stem!r}; keep one file per input name.")
            volumes[stem] = str(path.resolve())
    return volumes or {"image": str(folder.resolve())}


def cases_from_folder(folder, exclude=()) -> tuple[list[str], list[dict[str, str]]]:
    """``(columns, rows)`` of the manifest for the cases in ``folder`` (see the module's description).

    Each row has ``id`` and a value for every column. Raises ``ValueError`` when the folder is missing,
    holds no case, two cases get the same id, or the sub-folders do not all give the same columns.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Case folder {folder} not found: choose a folder with one image or sub-folder per case.")
    entries = _entries(folder, [Path(p).resolve() for p in exclude])
    files = [(p, stem) for p in entries if (stem := _volume_stem(p))]
    if files:
        columns = ["image"]
        found = [(_case_id(stem), {"image": str(p.resolve())}) for p, stem in files]
    else:
        found = [(_case_id(p.name), _subfolder_case(p)) for p in entries if p.is_dir()]
        columns = list(found[0][1]) if found else []
        for case, values in found:
            if set(values) != set(columns):
                raise ValueError(
                    f"Case folder {folder}: {case} has the inputs {', '.join(sorted(values))} but "
                    f"{found[0][0]} has {', '.join(sorted(columns))}; give every case the same file names."
                )
    if not found:
        raise ValueError(
            f"Case folder {folder} holds no case: put one volume file ({', '.join(VOLUME_SUFFIXES)}) or one "
            "sub-folder per case in it, or choose a manifest CSV instead."
        )
    ids = [case for case, _ in found]
    repeated = sorted({case for case in ids if ids.count(case) > 1})
    if repeated:
        raise ValueError(f"Case folder {folder}: several files or folders give the case id {', '.join(repeated)}.")
    return columns, [{"id": case, **values} for case, values in found]


def write_manifest(path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    """Write the manifest CSV (``id`` then ``columns``) to ``path``; returns it."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", *columns])
        writer.writeheader()
        writer.writerows(rows)
    return path
