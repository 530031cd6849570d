"""No function of the four modules is longer than 60 lines (CONTRIBUTING.md, Style), numba kernels apart.

A function's length runs from its ``def`` line to the last line of its body, docstring included. A numba
kernel (decorated with ``@njit``, ``@numba.njit``, ``@jit`` or ``@numba.jit``, with or without arguments,
or assigned through such a call, ``kernel = numba.njit(cache=True)(_kernel)``) is exempt: splitting one
costs a call per inner iteration.
"""

import ast
import subprocess
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_FOLDERS = ("MedAICommon", "MedAISeg", "MedAIRegister", "MedAIPlan")
MAX_LINES = 60
NUMBA_DECORATORS = {"njit", "jit", "numba.njit", "numba.jit"}


def _is_numba_decorator(node: ast.expr) -> bool:
    """True for ``njit``, ``numba.njit``, ``jit``, ``numba.jit`` and calls of them (``njit(cache=True)``)."""
    target = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(target) in NUMBA_DECORATORS


def _assigned_kernels(tree: ast.Module) -> set[str]:
    """Names of functions compiled by assignment: ``x = njit(f)`` or ``x = numba.njit(...)(f)``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            call = node.value
            if _is_numba_decorator(call.func) or _is_numba_decorator(call):
                names.update(arg.id for arg in call.args if isinstance(arg, ast.Name))
    return names


def long_functions(source: str, filename: str = "<source>") -> tuple[list[str], list[str]]:
    """``(too long, exempt kernels)`` of one source file, each entry ``file:function:lines``."""
    tree = ast.parse(source, filename=filename)
    assigned = _assigned_kernels(tree)
    too_long, kernels = [], []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines = node.end_lineno - node.lineno + 1
        entry = f"{filename}:{node.name}:{lines}"
        if any(_is_numba_decorator(d) for d in node.decorator_list) or node.name in assigned:
            kernels.append(entry)
        elif lines > MAX_LINES:
            too_long.append(entry)
    return too_long, kernels


def module_files() -> list[Path]:
    """Every Python file of the four module folders."""
    return sorted(p for folder in MODULE_FOLDERS for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_function_of_the_modules_is_longer_than_60_lines():
    files = module_files()
    assert len(files) > 50, f"only {len(files)} Python files found under {MODULE_FOLDERS}"
    too_long, kernels = [], []
    for path in files:
        found, exempt = long_functions(path.read_text(), str(path.relative_to(REPO)))
        too_long += found
        kernels += exempt
    assert kernels, "no numba kernel found: the exemption rule no longer matches how kernels are written"
    assert too_long == [], (
        f"functions over {MAX_LINES} lines (file:function:lines); split them into named "
        f"helpers: {too_long}. Exempt numba kernels: {kernels}"
    )


def _function(name: str, body_lines: int, decorator: str = "") -> str:
    body = "\n".join(f"    x{n} = {n}" for n in range(body_lines))
    return f"{decorator}\ndef {name}():\n{body}\n" if decorator else f"def {name}():\n{body}\n"


def test_the_scan_counts_def_to_last_line_and_exempts_numba_kernels_only():
    source = "\n".join(
        [
            "import numba",
            "from numba import njit",
            _function("fits", MAX_LINES - 1),
            _function("too_long", MAX_LINES),
            _function("kernel", 80, "@numba.njit(cache=True, parallel=True)"),
            _function("bare_kernel", 80, "@njit"),
            _function("jit_kernel", 80, "@numba.jit(nopython=True)"),
            _function("_compiled_later", 80),
            "compiled = numba.njit(cache=True)(_compiled_later)",
            _function("cached", 80, "@functools.lru_cache"),
        ]
    )
    too_long, kernels = long_functions(source, "example.py")
    assert too_long == [f"example.py:too_long:{MAX_LINES + 1}", "example.py:cached:81"]
    assert kernels == [
        "example.py:kernel:81",
        "example.py:bare_kernel:81",
        "example.py:jit_kernel:81",
        "example.py:_compiled_later:81",
    ]


def test_a_docstring_and_nested_functions_count_towards_the_length():
    source = textwrap.dedent('''
        def outer():
            """Docstring
            over three lines.
            """
            def inner():
                return 1
            return inner
    ''')
    assert long_functions(source, "x.py") == ([], [])
    too_long, _ = long_functions(source.replace("return inner", "return inner\n" + "    pass\n" * 55), "x.py")
    assert too_long == ["x.py:outer:62"]


def test_no_python_file_is_over_400_lines():
    """Every tracked Python file (modules, tests, benchmarks, utilities) stays under 400 lines."""
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    files = [REPO / name for name in listed.stdout.split() if (REPO / name).is_file()]
    assert len(files) > 100
    too_long = [f"{p.relative_to(REPO)}: {n}" for p in files if (n := len(p.read_text().splitlines())) > 400]
    assert too_long == []
