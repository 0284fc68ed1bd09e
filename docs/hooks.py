"""MkDocs hook: the reference pages, generated from the code at every build, so they cannot go stale.

- ``reference/cli.md``: ``mlops --help`` and every subcommand's help (``pipelines.cli.build_parser``);
- ``reference/config.md``: every field of the pipeline config (``pipelines.config.PipelineConfig``,
  walked recursively) with its type, default and description, and the bundled ``flights.yaml``;
- ``reference/make.md``: the Makefile's targets, as ``make help`` lists them;
- ``reference/benchmarks.md`` and ``reference/helm-chart.md``: ``benchmarks/README.md`` and
  ``helm/mlops/README.md`` as they are.

MkDocs loads this file as a hook; ``on_files`` runs it again as a script in a child process (the
same interpreter, ``PYTHONPATH`` at the repository), which imports the code and
prints the pages as JSON. The build's own process never imports ``pipelines``, so every build,
each rebuild of ``mkdocs serve`` included, reads the code as it is now. Any failure stops the build.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "Generated from the code at build time (`docs/hooks.py`): do not edit, change the code."


# --- the hook (runs inside MkDocs) -------------------------------------------------------------


def on_files(files, config):
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    child = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if child.returncode != 0:
        raise PluginError(f"docs/hooks.py could not generate the reference pages:\n{child.stderr[-3000:]}")
    for path, content in json.loads(child.stdout).items():
        files.append(File.generated(config, path, content=content))
    return files


# --- the generator (runs as a script in the child process) -------------------------------------


def fence(text: str, lang: str = "text") -> str:
    ticks = "`" * max([3, *(len(t) + 1 for t in re.findall(r"`{3,}", text))])
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def cell(text: str) -> str:
    """Text for one Markdown table cell: one line, pipes escaped, RST's double backticks made single."""
    return " ".join(text.replace("``", "`").split()).replace("|", "\\|")


def cli_page() -> str:
    import argparse

    from pipelines.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summary = {a.dest: a.help or "" for a in sub._choices_actions}
    out = [
        "# CLI reference: `mlops`",
        "",
        f"{GENERATED} Source: `pipelines/cli.py`. In the repository, `.venv/bin/mlops` runs it.",
        "",
        "| command | what |",
        "|---|---|",
        *(f"| [`mlops {name}`](#mlops-{name}) | {cell(summary.get(name, ''))} |" for name in sub.choices),
        "",
        "## `mlops`",
        "",
        fence(parser.format_help()),
    ]
    for name, subparser in sub.choices.items():
        out += ["", f"## `mlops {name}` {{ #mlops-{name} }}", "", fence(subparser.format_help())]
    return "\n".join(out) + "\n"


def type_text(annotation) -> str:
    """A field's type as Markdown; a nested model links to its section."""
    import types
    import typing

    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "`null`"
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__} of " + ", ".join(type_text(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is typing.Any:
        return "any"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def constraints(field) -> str:
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥", "pattern": "matches"}
    found = []
    for item in field.metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{sign} `{value}`")
    return ", ".join(found)


def default_text(field) -> str:
    from pydantic import BaseModel

    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "(its section)"
    return f"`{json.dumps(value, default=str)}`"


def comments(model) -> dict[str, str]:
    """The ``#`` comments written above and beside each field in the model's source."""
    import inspect

    try:
        source = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"    (\w+)\s*:", line)
        if match and match.group(1) in model.model_fields:
            inline = line.split("  # ", 1)[1] if "  # " in line else ""
            found[match.group(1)] = " ".join([*pending, inline]).strip()
        pending = []
    return found


def nested(annotation):
    """The config models inside a field's type, with the path suffix that reaches them."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
        return
    origin = typing.get_origin(annotation)
    suffix = {list: "[]", dict: ".<name>"}.get(origin, "")
    for arg in typing.get_args(annotation):
        for more, model in nested(arg):
            yield suffix + more, model


def config_page() -> str:
    from pipelines import config as module
    from pipelines import run_parameters

    sections: list[tuple[str, type]] = []

    def walk(path: str, model: type) -> None:
        if any(model is seen for _, seen in sections):
            return
        sections.append((path, model))
        for name, field in model.model_fields.items():
            for suffix, sub in nested(field.annotation):
                walk(f"{path}.{name}{suffix}" if path else f"{name}{suffix}", sub)

    walk("", module.PipelineConfig)
    out = [
        "# Configuration reference",
        "",
        f"{GENERATED} Source: `pipelines/config.py` (pydantic models; the root is `PipelineConfig`).",
        "",
        "A dataset is one YAML file (`MLOPS_CONFIG`; see [Your own data](../your-data.md)). "
        "Unknown keys are errors, never silent defaults. Sections: "
        + ", ".join(f"[`{path or '(top level)'}`](#{model.__name__.lower()})" for path, model in sections)
        + ".",
    ]
    for path, model in sections:
        doc = model.__dict__.get("__doc__") or ""
        notes = comments(model)
        out += ["", f"## `{path or '(top level)'}` {{ #{model.__name__.lower()} }}", ""]
        out += [f"Model `{model.__name__}`." + (f" {cell(doc)}" if doc.strip() else ""), ""]
        out += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            kind = type_text(field.annotation)
            if constraints(field):
                kind += f", {constraints(field)}"
            description = field.description or notes.get(name, "")
            out.append(f"| `{name}` | {kind} | {default_text(field)} | {cell(description)} |")
    out += [
        "",
        "## Run parameters { #run-parameters }",
        "",
        "What a manual run may override (the DAG's trigger form, or `mlops run` / `mlops step`): "
        "each parameter sets one config field for that run only. Source: `pipelines/run_parameters.py`.",
        "",
        "| parameter | config field | form title | DAGs | description |",
        "|---|---|---|---|---|",
        *(
            f"| `{p.name}` | `{'.'.join(p.path)}` | {cell(p.title)} | {', '.join(p.dags)} | "
            f"{cell(p.description or '')} |"
            for p in run_parameters.PARAMETERS
        ),
        "",
        "## The bundled config: `pipelines/datasets/flights.yaml` { #flights-yaml }",
        "",
        "The default dataset (`MLOPS_CONFIG` unset), as the file is:",
        "",
        fence((ROOT / "pipelines" / "datasets" / "flights.yaml").read_text(), "yaml"),
    ]
    return "\n".join(out) + "\n"


def make_page() -> str:
    listed = subprocess.run(
        ["make", "-s", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    rows = re.findall(r"^\s*make (\S+)\s+(.*)$", listed, flags=re.M)
    if not rows:
        raise SystemExit(f"`make help` listed no target:\n{listed}")
    return (
        "\n".join(
            [
                "# Makefile targets",
                "",
                f"{GENERATED} Source: the `## ` comments of the `Makefile`, as `make help` prints them.",
                "",
                "| target | what |",
                "|---|---|",
                *(f"| `make {target}` | {cell(text)} |" for target, text in rows),
            ]
        )
        + "\n"
    )


def verbatim_page(path: str) -> str:
    """A Markdown file as it is, but for a blank line before a list that follows a paragraph's line
    (GitHub starts a list there; Python-Markdown would read the list as the paragraph's text)."""
    lines, in_fence, previous = [], False, ""
    for line in (ROOT / path).read_text().splitlines():
        in_fence ^= line.lstrip().startswith("```")
        if not in_fence and line.startswith("- ") and previous.strip() and previous[0] not in " -|":
            lines.append("")
        lines.append(line)
        previous = line
    note = f"This page is `{path}`, included as it is at build time (`docs/hooks.py`)."
    return "\n".join([lines[0], "", note, *lines[1:]]) + "\n"


def main() -> None:
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only, whatever the code prints
        pages = {
            "reference/cli.md": cli_page(),
            "reference/config.md": config_page(),
            "reference/make.md": make_page(),
            "reference/benchmarks.md": verbatim_page("benchmarks/README.md"),
            "reference/helm-chart.md": verbatim_page("helm/mlops/README.md"),
        }
    json.dump(pages, sys.stdout)


if __name__ == "__main__":
    main()
