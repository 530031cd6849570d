"""When is a path parameter "chosen"? One answer for the panels, their Logic and the CLI.

Slicer's parameter node stores a ``pathlib.Path`` parameter as text and its default is ``Path()``,
which is ``Path('.')``; an empty ``ctkPathLineEdit`` reads back as ``Path('')``, also ``Path('.')``.
So an unset path is not empty: used as is, it means Slicer's working directory (a DICOM import would
scan it, a training run or an export would write there). These helpers treat ``None``, ``""``,
whitespace and ``"."`` as unset, and ask for an absolute path where one is needed. Qt-free.
"""

from __future__ import annotations

from pathlib import Path, PurePath

_UNSET_TEXTS = ("", ".")


def is_unset_path(value) -> bool:
    """True when ``value`` (a ``Path``, text or None) names no path the user chose.

    ``None``, ``""``, whitespace, ``"."`` and ``Path()`` (which Slicer's parameter node gives for a path
    that was never set) are unset.
    """
    if value is None:
        return True
    text = str(value).strip()
    return text in _UNSET_TEXTS or PurePath(text) == PurePath(".")


def chosen_path(value) -> Path | None:
    """``value`` as a ``Path``, or None when it is unset (see :func:`is_unset_path`)."""
    return None if is_unset_path(value) else Path(str(value).strip()).expanduser()


def require_path(value, what: str, must_exist: bool = False, kind: str = "") -> Path:
    """The chosen path, absolute; ``ValueError`` naming ``what`` when it is unset, relative or missing.

    Args:
        value: the parameter's value (``Path``, text or None).
        what: what the path is for, as the panel names it (e.g. ``"the bundle folder"``).
        must_exist: the path must exist (an input); else its parent folder must exist (an output).
        kind: ``"file"`` or ``"folder"`` to require that kind when it exists; ``""`` for either.

    A relative path would resolve against Slicer's working directory, which the user never sees, so
    it is refused with the same advice as an unset one.
    """
    path = chosen_path(value)
    if path is None:
        raise ValueError(f"Choose {what} first: it is not set.")
    if not path.is_absolute():
        raise ValueError(
            f"Choose {what} with the file dialog: {str(path)!r} is a relative path, "
            "which would point into Slicer's working directory."
        )
    if must_exist and not path.exists():
        raise ValueError(f"{what[:1].upper()}{what[1:]} does not exist: {path}. Choose an existing one.")
    if not must_exist and not path.exists() and not path.parent.is_dir():
        raise ValueError(f"The folder of {what} does not exist: {path.parent}. Create it or choose another one.")
    if kind == "file" and path.exists() and not path.is_file():
        raise ValueError(f"{what[:1].upper()}{what[1:]} must be a file, but {path} is a folder.")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{what[:1].upper()}{what[1:]} must be a folder, but {path} is a file.")
    return path
