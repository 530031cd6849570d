"""The pipeline: a YAML file with a list ``steps``, each a ``medai`` command run on every case.

Each step has ``name``, ``command`` (a ``medai`` subcommand), ``args`` (that command's command-line
arguments, exactly as on the command line) and optionally ``needs: [model]`` (the worker's model cache).
In ``args``, ``{case.COLUMN}`` stands for a manifest value, ``{STEP}`` for the output folder of an earlier
step named STEP and ``{out}`` for this step's own output folder. Everything is checked before any case
runs: unknown commands, columns, steps, options and placeholders are refused with what to change.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..cli.registry import COMMANDS

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
NEEDS = ("model",)
#: Folders searched for a pipeline given by name (``--pipeline segmentation-cohort``): the package's own
#: ``pipelines`` folder, package data in a wheel and a resource of the Slicer extension alike.
SHIPPED_FOLDERS = (Path(__file__).resolve().parent / "pipelines",)
_RESERVED = {"out", "case"}


@dataclass
class Step:
    """One step: ``name``, ``command``, ``args`` (with placeholders), ``needs`` and the earlier ``uses``."""

    name: str
    command: str
    args: list[str]
    needs: list[str] = field(default_factory=list)
    uses: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    """The checked steps of a pipeline file, in order."""

    path: Path
    steps: list[Step]


def shipped_pipelines() -> dict[str, Path]:
    """The pipelines shipped with MedAI, by name (file name without ``.yaml``)."""
    found = {}
    for folder in SHIPPED_FOLDERS:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def find_pipeline(name_or_path) -> Path:
    """A pipeline file: ``name_or_path`` when it exists, else the shipped pipeline of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_pipelines()
    key = path.name.removesuffix(".yaml").removesuffix(".yml")
    if key in shipped and path.parent == Path("."):
        return shipped[key]
    raise ValueError(
        f"Pipeline {name_or_path} not found: give a YAML file, or the name of a shipped pipeline "
        f"({', '.join(shipped) or 'none found'})."
    )


def _step_placeholders(step: Step, index: int, names: list[str], columns: list[str]) -> None:
    earlier, later = names[:index], names[index:]
    where = f"step {index + 1} ({step.name})"
    for arg in step.args:
        for token in PLACEHOLDER.findall(arg):
            if token == "out":
                continue
            if token.startswith("case."):
                column = token[5:]
                if column not in columns:
                    raise ValueError(
                        f"{where} uses {{case.{column}}}, but the manifest has no column {column!r} "
                        f"(its columns: {', '.join(columns) or 'only id'})."
                    )
                step.columns.append(column)
            elif token in earlier:
                step.uses.append(token)
            elif token in later:
                raise ValueError(
                    f"{where} uses {{{token}}}, the output of a step that does not run before it; "
                    "a step may only use the steps above it."
                )
            else:
                raise ValueError(
                    f"{where} uses {{{token}}}, which is no earlier step, manifest column "
                    f"({{case.COLUMN}}) or {{out}}; earlier steps: {', '.join(earlier) or 'none'}."
                )
    step.uses = list(dict.fromkeys(step.uses))
    step.columns = list(dict.fromkeys(step.columns))


def _parse_step(raw, index: int) -> Step:
    where = f"step {index + 1}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping with name, command and args.")
    unknown = sorted(set(raw) - {"name", "command", "args", "needs"})
    if unknown:
        raise ValueError(f"{where} has unknown keys {', '.join(unknown)}; a step has name, command, args, needs.")
    name = str(raw.get("name", "")).strip()
    if not _STEP_NAME.match(name) or name in _RESERVED:
        raise ValueError(f"{where} needs a name of letters, digits, '_' and '-' (not 'out' or 'case'), got {name!r}.")
    command = str(raw.get("command", "")).strip()
    if command not in COMMANDS or command == "batch":
        raise ValueError(
            f"{where} ({name}): unknown command {command!r}; use one of the medai commands: "
            f"{', '.join(c for c in COMMANDS if c != 'batch')}."
        )
    args = raw.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise ValueError(
            f"{where} ({name}): args must be a list of command-line words, e.g. ['{{case.ct}}', "
            "'{out}/ct.nrrd', '--method', 'nlm']."
        )
    args = [str(a) for a in args]
    if any(a == "--report" or a.startswith("--report=") for a in args):
        raise ValueError(
            f"{where} ({name}): leave out --report; every step's report is written to "
            "<output>/<case>/<step>/report.json."
        )
    needs = raw.get("needs", []) or []
    if not isinstance(needs, list) or any(n not in NEEDS for n in needs):
        raise ValueError(f"{where} ({name}): needs must be a list of {', '.join(NEEDS)}, got {needs!r}.")
    return Step(name=name, command=command, args=args, needs=[str(n) for n in needs])


def check_arguments(step: Step, sample: dict[str, str] | None = None) -> None:
    """Parse ``step.args`` with the command's own parser, ``{case.COLUMN}`` filled from ``sample`` (one
    case's values; a sample path otherwise) and step folders with sample paths.

    Raises ``ValueError`` with argparse's message when an option is unknown, missing or malformed.
    """
    from ..cli.main import build_parser

    sample = sample or {}

    def fill(match) -> str:
        token = match.group(1)
        return sample.get(token[5:], "/sample") if token.startswith("case.") else f"/sample/{token}"

    sample = [PLACEHOLDER.sub(fill, arg) for arg in step.args]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser(step.command).parse_args([step.command, *sample])
    except SystemExit as error:
        message = stderr.getvalue().strip().splitlines()
        detail = message[-1] if message else f"exit {error.code}"
        raise ValueError(f"step {step.name}: medai {step.command} refuses its args: {detail}") from None


def load_pipeline(
    name_or_path, columns: list[str], sample: dict[str, str] | None = None, check_args: bool = True
) -> Pipeline:
    """Read and check a pipeline against the manifest's ``columns`` (``sample``: one case's values, to
    check the args with the commands' own parsers); ``ValueError`` says what to fix."""
    path = find_pipeline(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"Pipeline {path} is not valid YAML: {' '.join(str(error).split())[:200]}") from error
    raw_steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ValueError(f"Pipeline {path} needs a non-empty list 'steps' (each with name, command, args).")
    steps = [_parse_step(raw, index) for index, raw in enumerate(raw_steps)]
    names = [step.name for step in steps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Pipeline {path}: step names must differ ({', '.join(repeated)} repeated).")
    for index, step in enumerate(steps):
        _step_placeholders(step, index, names, columns)
        if check_args:
            check_arguments(step, sample)
    return Pipeline(path=path.resolve(), steps=steps)


def substitute(arg: str, values: dict[str, str]) -> str:
    """``arg`` with each placeholder replaced from ``values`` (keys ``case.COL``, step names, ``out``)."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], arg)
