"""Header checks of volume files before Slicer's storage node reads them: negative spacings.

A negative voxel spacing means "this axis runs the other way". Whether a reader keeps that (direction
reversed, spacing positive) or drops the sign (the data mirrored) depends on the format and the reader:

* NRRD ``spacings`` (no ``space``): teem, ITK and Slicer all read the axis reversed with a positive
  spacing, so the physical geometry is kept exactly; loading goes on with a warning that says so.
* NRRD ``spacings`` together with ``space``: not valid NRRD (ITK refuses it); refused with the fix.
* NIfTI ``pixdim[1..3]`` < 0: ITK (and Slicer) apply the sign, nibabel (and so MONAI and TotalSegmentator)
  takes the absolute value, so the same file is mirrored between tools; refused with the fix.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from .errors import BridgeError

_NRRD_HEADER_LIMIT = 1 << 16


def _nrrd_fields(path: Path) -> dict[str, str]:
    """``{field: value}`` of a NRRD header (``.nrrd`` up to the blank line, or a whole ``.nhdr``)."""
    with path.open("rb") as handle:
        head = handle.read(_NRRD_HEADER_LIMIT)
    if not head.startswith(b"NRRD"):
        return {}
    text = head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = {}
    for line in text.splitlines()[1:]:
        if ": " in line and not line.startswith("#"):
            key, value = line.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
    return fields


def _nifti_pixdim(path: Path) -> list[float] | None:
    """pixdim[0..7] of a NIfTI-1 or NIfTI-2 header (``.nii``, ``.nii.gz``, ``.hdr``), None when not NIfTI."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(540)
    except (OSError, EOFError, zlib.error):  # not gzip / truncated: the storage node says what is wrong
        return None
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(f"{endian}i", head[:4])[0] == 348:
            return list(struct.unpack(f"{endian}8f", head[76:108]))
        if len(head) >= 540 and struct.unpack(f"{endian}i", head[:4])[0] == 540:
            return list(struct.unpack(f"{endian}8d", head[104:168]))
    return None


def check_volume_header(path) -> str | None:
    """A warning (or ``None``) for a volume file whose header gives a negative spacing; ``BridgeError``
    when its meaning differs between readers (see the module docstring)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        fields = _nrrd_fields(path)
        if "spacings" not in fields:
            return None
        try:
            spacings = [float(v) for v in fields["spacings"].split()]
        except ValueError:
            return None
        negative = [f"{v:g} (axis {n})" for n, v in enumerate(spacings) if v < 0]
        if "space" in fields or "space dimension" in fields:
            raise BridgeError(
                f"{path} gives both 'spacings' and a 'space'; NRRD allows one or the other. Write the "
                "geometry as 'space directions' and 'space origin' (as Slicer saves volumes)."
            )
        if negative:
            return (
                f"{path} has a negative spacing ({', '.join(negative)} in its 'spacings' field): read as that "
                "axis running the other way with a positive spacing, so the physical geometry is kept; "
                "rewrite the file with 'space directions' to make this explicit."
            )
        return None
    if name.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
        pixdim = _nifti_pixdim(path)
        if pixdim and any(v < 0 for v in pixdim[1:4]):
            raise BridgeError(
                f"{path} has a negative voxel size (pixdim[1..3] = {pixdim[1]:g}, {pixdim[2]:g}, "
                f"{pixdim[3]:g}): ITK and Slicer apply the sign, nibabel and MONAI drop it, so the "
                "volume would be mirrored between tools. Rewrite the header with positive pixdim and "
                "the orientation in its qform/sform (e.g. nibabel: img.header.set_zooms(abs values) "
                "and set_qform(affine))."
            )
    return None
