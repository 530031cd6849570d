"""Checks of a command's input paths, made before the command imports its heavy libraries.

A ``medai`` command checks that its input files exist first, so that a wrong path is refused in a fraction of
a second instead of after seconds of importing torch, MONAI, VTK or SimpleITK. The message is the bridge's
own (``File not found: PATH; check the path.``), so it reads the same wherever the path is found missing.
"""

from __future__ import annotations

from pathlib import Path

# a segmentation file with one of its segments, FILE.seg.nrrd:SEGMENT (icp, register masks)
_SEGMENT_SUFFIXES = (".seg.nrrd:", ".seg.nhdr:")


def input_path(spec: str) -> str:
    """The file part of an input argument: ``FILE.seg.nrrd:SEGMENT`` -> ``FILE.seg.nrrd``; others unchanged."""
    lower = str(spec).lower()
    for suffix in _SEGMENT_SUFFIXES:
        index = lower.rfind(suffix)
        if index >= 0:
            return str(spec)[: index + len(suffix) - 1]
    return str(spec)


def require_inputs(*paths) -> None:
    """``ValueError`` naming the first of ``paths`` that exists neither as a file nor as a folder.

    ``None`` entries (options not given) are skipped; ``FILE.seg.nrrd:SEGMENT`` is checked as its file.
    """
    for spec in paths:
        if spec is None:
            continue
        path = Path(input_path(spec)).expanduser()
        if not path.exists():
            raise ValueError(f"File not found: {path}; check the path.")


def require_output_folder(path) -> Path:
    """``path`` as a folder, created if needed; ``ValueError`` when a file is in the way."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise ValueError(
            f"Cannot create the output folder {folder}: a file of that name is in the way "
            f"({error.filename}); choose another folder."
        ) from error
    return folder
