"""Refuse volume files that were cut short, before a reader fills the missing voxels with zeros.

ITK (and so Slicer's storage nodes) reads a truncated ``.nii.gz`` without an error: the voxels past the
end of the data come back as zeros, and half a CT would be segmented, planned or evaluated as if the rest
were air. This module checks, for NIfTI (``.nii``, ``.nii.gz``) and NRRD (``.nrrd`` and ``.seg.nrrd``
with attached raw or gzip data), that a gzip stream reaches its end marker and that the data holds as
many bytes as the header's voxel count and type need. Other formats are left to their readers.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

from .errors import BridgeError

_CHUNK = 1 << 20
_NRRD_TYPE_BYTES = {
    "signed char": 1,
    "int8": 1,
    "int8_t": 1,
    "uchar": 1,
    "unsigned char": 1,
    "uint8": 1,
    "uint8_t": 1,
    "short": 2,
    "short int": 2,
    "signed short": 2,
    "signed short int": 2,
    "int16": 2,
    "int16_t": 2,
    "ushort": 2,
    "unsigned short": 2,
    "unsigned short int": 2,
    "uint16": 2,
    "uint16_t": 2,
    "int": 4,
    "signed int": 4,
    "int32": 4,
    "int32_t": 4,
    "uint": 4,
    "unsigned int": 4,
    "uint32": 4,
    "uint32_t": 4,
    "longlong": 8,
    "long long": 8,
    "long long int": 8,
    "signed long long": 8,
    "signed long long int": 8,
    "int64": 8,
    "int64_t": 8,
    "ulonglong": 8,
    "unsigned long long": 8,
    "unsigned long long int": 8,
    "uint64": 8,
    "uint64_t": 8,
    "float": 4,
    "double": 8,
}


def _truncated(path: Path, why: str) -> BridgeError:
    return BridgeError(
        f"{path} is truncated: {why}. The file was cut short (an interrupted copy, download or "
        "export); copy or export it again."
    )


def _inflated_size(handle, path: Path) -> int:
    """Bytes in the gzip (or zlib) stream read from ``handle``; raises when it ends before its end marker."""
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    total = 0
    try:
        while not inflater.eof and (chunk := handle.read(_CHUNK)):
            while chunk and not inflater.eof:
                total += len(inflater.decompress(chunk, 1 << 24))
                chunk = inflater.unconsumed_tail
    except zlib.error as error:
        raise BridgeError(f"{path}: its compressed data is corrupt ({error}); copy or export it again.") from error
    if not inflater.eof:
        raise _truncated(path, "its compressed data ends before the end of its stream")
    return total


def _nifti_needed(head: bytes) -> tuple[int, int] | None:
    """(data offset, data bytes) from a NIfTI-1/2 header, None when ``head`` is not one."""
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(f"{endian}i", head[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", head[40:56])
            bitpix = struct.unpack(f"{endian}h", head[72:74])[0]
            offset = int(struct.unpack(f"{endian}f", head[108:112])[0])
        elif len(head) >= 540 and struct.unpack(f"{endian}i", head[:4])[0] == 540:
            dims = struct.unpack(f"{endian}8q", head[16:80])
            bitpix = struct.unpack(f"{endian}h", head[14:16])[0]
            offset = int(struct.unpack(f"{endian}q", head[168:176])[0])
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0:
            return None
        return offset, math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1]) * bitpix // 8
    return None


def _check_nifti(path: Path) -> None:
    compressed = path.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(540)
    except (OSError, EOFError, zlib.error):
        head = b""
    needed = _nifti_needed(head)
    if compressed:
        with path.open("rb") as handle:
            size = _inflated_size(handle, path)
    else:
        size = path.stat().st_size
    if needed and size < needed[0] + needed[1]:
        raise _truncated(path, f"its header needs {needed[0] + needed[1]} bytes of image data, it holds {size}")


def _nrrd_header(path: Path) -> tuple[dict[str, str], int] | None:
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return None
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
    return fields, end + 2


def _check_nrrd(path: Path) -> None:
    parsed = _nrrd_header(path)
    if parsed is None:
        return
    fields, offset = parsed
    if "data file" in fields or "datafile" in fields or "line skip" in fields or "byte skip" in fields:
        return
    encoding = fields.get("encoding", "raw").lower()
    type_bytes = _NRRD_TYPE_BYTES.get(fields.get("type", "").lower())
    try:
        needed = math.prod(int(v) for v in fields.get("sizes", "").split()) * (type_bytes or 0)
    except ValueError:
        return
    if encoding == "raw":
        size = path.stat().st_size - offset
    elif encoding in ("gzip", "gz"):
        with path.open("rb") as handle:
            handle.seek(offset)
            size = _inflated_size(handle, path)
    else:
        return
    if type_bytes and size < needed:
        raise _truncated(path, f"its header needs {needed} bytes of voxel data, it holds {size}")


def check_complete(path) -> None:
    """Raise ``BridgeError`` when a NIfTI or NRRD file holds less data than its header describes."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith(".nrrd"):
        _check_nrrd(path)
