"""Settings dataclasses that write their own ``medai`` command line and read it back.

A field's metadata, made with :func:`option`, names the command's option once; :func:`to_cli_args`
generates the options (what a worker job runs) and :func:`from_namespace` reads the parsed arguments back
into the dataclass, so the two cannot drift apart. Values are written so that they parse back equal
(floats in their shortest exact form; a value starting with ``-`` as ``--option=value``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def option(flag: str, kind: str = "value") -> dict:
    """Field metadata for the option ``flag`` (e.g. ``"--device"``). ``kind``: ``value`` (one token), ``values``
    (``nargs``: one token per item), ``flag`` (``store_true``)."""
    if kind not in ("value", "values", "flag"):
        raise ValueError(f"Unknown option kind {kind!r}; use value, values or flag.")
    return {"option": flag, "kind": kind}


def format_value(value) -> str:
    """``value`` as one command-line token that parses back to the same value ('60', '0.1', '1.2345678901')."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def _token(flag: str, text: str) -> list[str]:
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def to_cli_args(settings) -> list[str]:
    """The options of ``settings`` (a dataclass whose fields carry :func:`option` metadata), in field order;
    None values and False flags are left out."""
    args: list[str] = []
    for f in dataclasses.fields(settings):
        if "option" not in f.metadata:
            continue
        flag, kind, value = f.metadata["option"], f.metadata["kind"], getattr(settings, f.name)
        if value is None or value is False:
            continue
        if kind == "flag":
            args.append(flag)
        elif kind == "values":
            args += [flag, *(format_value(v) for v in value)]
        else:
            args += _token(flag, format_value(value))
    return args


def from_namespace(cls: type[T], args, **overrides: Any) -> T:
    """A ``cls`` from parsed arguments: each field with :func:`option` metadata from the attribute argparse
    stores that option in (options the command lacks keep the field default; ``values`` become tuples);
    ``overrides`` set fields directly."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "option" not in f.metadata:
            continue
        dest = f.metadata["option"].lstrip("-").replace("-", "_")
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if f.metadata["kind"] == "values" and value is not None:
            value = tuple(value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)
