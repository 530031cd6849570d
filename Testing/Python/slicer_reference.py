"""Slicer's own Python layer at several versions, read with ``ast`` (never imported) for contract tests.

The sources are in ``../shared/reference/slicer/<version>/`` (``MEDAI_SLICER_REFERENCE`` overrides): unmodified
files of github.com/Slicer/Slicer at tags ``v5.8.1``, ``v5.10.0``, ``v5.12.3`` and a dated ``main`` snapshot.
They need Slicer's Qt runtime to run, so what they define is found by parsing; only the parameter-node
serializers' small ``canSerialize`` predicates are compiled on their own, to apply Slicer's real rule to
MedAI's annotations.
"""

from __future__ import annotations

import ast
import enum
import functools
import os
import pathlib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("MEDAI_SLICER_REFERENCE", REPO.parent / "shared" / "reference" / "slicer"))
RUNTIME_ATTRIBUTE = re.compile(r"\.\. py:attribute:: (\w+)")


def version_folders() -> list[str]:
    """Version folders present (``v5.8.1``, ..., ``main-2026-08-21``), oldest first; empty when absent."""
    if not REFERENCE.is_dir():
        return []
    found = [p.name for p in REFERENCE.iterdir() if (p / "Base" / "Python" / "slicer" / "__init__.py").is_file()]
    return sorted(found, key=version_of)


def version_of(folder: str) -> tuple[int, int, int]:
    """``v5.8.1`` -> (5, 8, 1); a ``main-<date>`` snapshot is the development version after the newest tag."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", folder)
    if match:
        return tuple(int(g) for g in match.groups())
    tags = (
        [p.name for p in REFERENCE.iterdir() if re.fullmatch(r"v\d+\.\d+\.\d+", p.name)] if REFERENCE.is_dir() else []
    )
    newest = max((version_of(t) for t in tags), default=(0, 0, 0))
    return newest[0], newest[1] + 1, 0


def python_root(folder: str) -> Path:
    """``Base/Python/slicer`` of a version folder."""
    return REFERENCE / folder / "Base" / "Python" / "slicer"


@dataclass(frozen=True)
class Signature:
    """What a function (or a class's ``__init__``) accepts, from its definition."""

    positional: tuple[str, ...]
    keyword_only: tuple[str, ...] = ()
    varargs: bool = False
    varkw: bool = False

    @classmethod
    def of(cls, node: ast.FunctionDef, method: bool = False) -> Signature:
        """Signature of a ``def``; ``method`` drops the first parameter (``self``)."""
        args = node.args
        positional = [a.arg for a in args.posonlyargs + args.args]
        if method and positional:
            positional = positional[1:]
        return cls(
            tuple(positional), tuple(a.arg for a in args.kwonlyargs), args.vararg is not None, args.kwarg is not None
        )

    def problems(self, positional: int, keywords: tuple[str, ...]) -> list[str]:
        """Why a call with ``positional`` arguments and these keyword names would fail; empty when it binds."""
        found = []
        if positional > len(self.positional) and not self.varargs:
            found.append(f"{positional} positional arguments, accepts {len(self.positional)}")
        accepted = set(self.positional[positional:]) | set(self.keyword_only)
        found += [f"no keyword {k!r}" for k in keywords if k not in accepted and not self.varkw]
        return found


@dataclass
class ModuleApi:
    """Public names of one ``slicer.<module>``: name -> signature (None for what is not a plain function)."""

    path: Path
    names: dict[str, Signature | None] = field(default_factory=dict)


def _class_signature(node: ast.ClassDef) -> Signature | None:
    for item in node.body:
        if isinstance(item, ast.FunctionDef) and item.name == "__init__":
            return Signature.of(item, method=True)
    return None  # inherited constructor: not checked


def _define(names: dict, tree: ast.Module) -> None:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = Signature.of(node)
        elif isinstance(node, ast.ClassDef):
            names[node.name] = _class_signature(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({t.id: None for t in targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.ImportFrom):
            names.update({(a.asname or a.name): None for a in node.names if a.name != "*"})
        elif isinstance(node, ast.Import):
            names.update({(a.asname or a.name).split(".")[0]: None for a in node.names})


def _exported(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, (ast.List, ast.Tuple))
        ):
            return {elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)}
    return None


@functools.cache
def module_api(folder: str, module: str) -> ModuleApi | None:
    """What ``slicer.<module>`` defines at ``folder``; None when the module does not exist there.

    For a package (``parameterNodeWrapper``), ``from .x import *`` brings in ``x.__all__`` (or its public names).
    """
    root = python_root(folder)
    path = root / f"{module}.py"
    if not path.is_file():
        path = root / module / "__init__.py"
        if not path.is_file():
            return None
    api = ModuleApi(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    _define(api.names, tree)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and any(a.name == "*" for a in node.names):
            sibling = ast.parse((path.parent / f"{node.module}.py").read_text(encoding="utf-8"))
            sub: dict[str, Signature | None] = {}
            _define(sub, sibling)
            exported = _exported(sibling)
            api.names.update(
                {k: v for k, v in sub.items() if (k in exported if exported is not None else not k.startswith("_"))}
            )
    return api


def runtime_attributes(folder: str) -> set[str]:
    """Attributes the application sets on ``slicer`` (``app``, ``mrmlScene``, ...), as its docstring lists them."""
    return set(RUNTIME_ATTRIBUTE.findall((python_root(folder) / "__init__.py").read_text(encoding="utf-8")))


@functools.cache
def app_members_used(folder: str) -> frozenset[str]:
    """``slicer.app.<member>`` names that Slicer's own Python layer uses at ``folder``."""
    found = set()
    for path in (REFERENCE / folder / "Base" / "Python").rglob("*.py"):
        found.update(re.findall(r"slicer\.app\.(\w+)", path.read_text(encoding="utf-8")))
    return frozenset(found)


def _registered_serializer_classes(tree: ast.Module) -> list[ast.ClassDef]:
    def registered(node):
        return any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeSerializer")
            or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "parameterNodeSerializer")
            for d in node.decorator_list
        )

    return [n for n in tree.body if isinstance(n, ast.ClassDef) and registered(n)]


@functools.cache
def serializer_predicates(folder: str, slicer_module) -> tuple[tuple[str, typing.Callable], ...]:
    """``(serializer name, canSerialize)`` of every registered serializer at ``folder``, in registration order.

    Each ``canSerialize`` is compiled alone, with ``slicer`` bound to ``slicer_module`` (slicer-core's real
    MRML classes) and the standard modules it names; ``qt`` is absent, so a Qt type is never serializable here.
    """
    path = python_root(folder) / "parameterNodeWrapper" / "serializers.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    predicates = []
    for cls in _registered_serializer_classes(tree):
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and item.name == "canSerialize":
                function = ast.FunctionDef(**{**item.__dict__, "decorator_list": []})
                module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
                namespace = {
                    "slicer": slicer_module,
                    "pathlib": pathlib,
                    "typing": typing,
                    "types": types,
                    "enum": enum,
                }
                exec(compile(module, f"{path}:{cls.name}", "exec"), namespace)  # noqa: S102 - a pure predicate
                predicates.append((cls.name, namespace["canSerialize"]))
    return tuple(predicates)


def serializer_for(folder: str, slicer_module, type_) -> str | None:
    """Name of the serializer Slicer at ``folder`` picks for ``type_`` (a union needs one for each member)."""
    predicates = serializer_predicates(folder, slicer_module)

    def first(candidate):
        for name, can in predicates:
            try:
                if can(candidate):
                    return name
            except (NameError, AttributeError, TypeError):
                continue
        return None

    chosen = first(type_)
    if chosen == "UnionSerializer" and any(first(arg) is None for arg in typing.get_args(type_)):
        return None
    return chosen


def validator_api(folder: str) -> ModuleApi:
    """Classes of ``parameterNodeWrapper/validators.py`` (``Choice``, ``WithinRange`` ...) with their ``__init__``."""
    path = python_root(folder) / "parameterNodeWrapper" / "validators.py"
    api = ModuleApi(path)
    _define(api.names, ast.parse(path.read_text(encoding="utf-8")))
    return api


@functools.cache
def class_members(folder: str, module: str, class_name: str) -> frozenset[str] | None:
    """Methods and ``self.X`` attributes of ``slicer.<module>.<class_name>`` at ``folder`` (bases in the same file
    followed; ``unittest.TestCase`` members added for a test case); None when the class does not exist."""
    api = module_api(folder, module)
    if api is None:
        return None
    tree = ast.parse(api.path.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if class_name not in classes:
        return None
    members: set[str] = set()
    pending = [class_name]
    while pending:
        node = classes[pending.pop()]
        for item in ast.walk(node):
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item in node.body:
                members.add(item.name)
            elif (
                isinstance(item, ast.Attribute)
                and isinstance(item.ctx, ast.Store)
                and isinstance(item.value, ast.Name)
                and item.value.id == "self"
            ):
                members.add(item.attr)
        for base in node.bases:
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            if name in classes:
                pending.append(name)
            elif name == "TestCase":
                import unittest

                members.update(dir(unittest.TestCase))
    return frozenset(members)


class _WidgetClasses:
    """``qt``/``ctk``/``slicer`` as a GUI connector's predicate sees them: widget classes by name (one class per
    name, shared, so ``type(widget) == ctk.ctkPathLineEdit`` holds for a widget of that class), and for ``slicer``
    the real slicer-core MRML classes first."""

    registry: dict[str, type] = {}

    def __init__(self, real=None):
        self._real = real

    def __getattr__(self, name):
        if self._real is not None and hasattr(self._real, name):
            return getattr(self._real, name)
        return self.registry.setdefault(name, type(name, (), {}))


def widget_of_class(class_name: str):
    """An object whose type is the stand-in class named ``class_name`` (the .ui widget class)."""
    return _WidgetClasses().__getattr__(class_name)()


def _compiled_functions(path: Path, namespace: dict, names: set[str] | None = None) -> dict:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (names is None or node.name in names):
            module = ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[]))
            exec(compile(module, str(path), "exec"), namespace)  # noqa: S102 - pure typing helpers
    return namespace


@functools.cache
def connector_predicates(folder: str, slicer_module) -> tuple[tuple[str, typing.Callable], ...]:
    """``(connector name, canRepresent(widget, datatype))`` of each GUI connector class at ``folder``.

    The helpers they call (``unannotatedType``, ``isNodeOrUnionOfNodes`` ...) are compiled from that version's
    ``parameterNodeWrapper/util.py``; names they need beyond those (parameter packs) are absent, so such a
    connector never matches here.
    """
    package = python_root(folder) / "parameterNodeWrapper"
    namespace = {
        "slicer": _WidgetClasses(slicer_module),
        "qt": _WidgetClasses(),
        "ctk": _WidgetClasses(),
        "typing": typing,
        "Annotated": typing.Annotated,
        "Union": typing.Union,
        "pathlib": pathlib,
        "enum": enum,
    }
    _compiled_functions(package / "util.py", namespace)
    tree = ast.parse((package / "guiConnectors.py").read_text(encoding="utf-8"))
    predicates = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if (
                isinstance(item, ast.FunctionDef)
                and item.name == "canRepresent"
                and not isinstance(item.body[-1], ast.Raise)
            ):  # the abstract base raises
                function = ast.FunctionDef(**{**item.__dict__, "decorator_list": []})
                module = ast.fix_missing_locations(ast.Module(body=[function], type_ignores=[]))
                scope = dict(namespace)
                exec(compile(module, f"{package}:{cls.name}", "exec"), scope)  # noqa: S102 - a pure predicate
                predicates.append((cls.name, scope["canRepresent"]))
    return tuple(predicates)


def connector_for(folder: str, slicer_module, widget_class: str, datatype) -> str | None:
    """Name of a GUI connector at ``folder`` that binds a ``widget_class`` widget to ``datatype``, or None."""
    widget = widget_of_class(widget_class)
    for name, can in connector_predicates(folder, slicer_module):
        try:
            if can(widget, datatype):
                return name
        except (NameError, AttributeError, TypeError):
            continue
    return None
