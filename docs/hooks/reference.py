"""MkDocs hook: the spec and CLI references, generated from the code at every build.

``reference/spec.md`` walks the pydantic models of every kind a spec file may
hold (``shoal.manifest``'s kinds: Service, Sync, Config): one table per model,
each field by its YAML name, with its type, its default and the comment written
above it in the model's source. ``reference/cli.md`` is ``--help`` of every verb
and sub-verb of ``shoal``, from the argparse parser the command itself builds
(``shoal.cli.main.build_parser``). Nothing is written into ``docs/``: the pages
exist only in the build, so they cannot drift from the code.

Every page of ``docs/`` that the nav in ``mkdocs.yml`` does not list is added
under "More", so a new page is never left out of the site.
"""

from __future__ import annotations

import argparse
import ast
import enum
import inspect
import io
import os
import textwrap
import types
import typing
from contextlib import redirect_stdout
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.nav import Navigation, Section
from mkdocs.structure.pages import Page
from pydantic import BaseModel
from pydantic.fields import FieldInfo

SPEC_PAGE = "reference/spec.md"
CLI_PAGE = "reference/cli.md"
# Written by the manager only; what ``apply`` sends there is ignored.
MANAGER_OWNED = {"status"}


# ------------------------------------------------------------------ spec


def _comments(cls: type) -> dict[str, str]:
    """Field name → the comment lines right above it in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            if above:
                found[node.target.id] = " ".join(above)
    return found


def _unit(metadata: list[Any]) -> str | None:
    for item in metadata:
        func = getattr(item, "func", None)
        name = getattr(func, "__name__", "")
        if name == "parse_duration":
            return "duration (`500ms`, `5s`, `1m30s`)"
        if name == "parse_size":
            return "size (`512Mi`, `1G`, bytes)"
    return None


class _Walk:
    def __init__(self) -> None:
        self.seen: list[type[BaseModel]] = []

    def type_of(self, annotation: Any, metadata: list[Any] | None = None) -> str:
        unit = _unit(metadata or [])
        if unit:
            return unit
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            return self.type_of(args[0], list(args[1:]))
        if origin is typing.Literal:
            return " \\| ".join(f"`{a}`" for a in args)
        if origin in (typing.Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            return " \\| ".join(self.type_of(a) for a in rest)
        if origin is list:
            return f"list of {self.type_of(args[0])}"
        if origin is dict:
            return f"map of {self.type_of(args[0])} to {self.type_of(args[1])}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in self.seen:
                self.seen.append(annotation)
            return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        if annotation is type(None):
            return "null"
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
            annotation, f"`{getattr(annotation, '__name__', annotation)}`"
        )

    def default(self, info: FieldInfo) -> str:
        if info.is_required():
            return "**required**"
        if info.default_factory is not None:
            try:
                value = info.default_factory()  # type: ignore[call-arg]
            except TypeError:
                return ""
        else:
            value = info.default
        if isinstance(value, BaseModel):
            return ""
        if value is None:
            return "none"
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if value in ([], {}, ""):
            return "empty"
        return f"`{value}`"

    def table(self, model: type[BaseModel]) -> str:
        comments: dict[str, str] = {}
        for cls in reversed(model.__mro__):
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                comments.update(_comments(cls))
        doc = inspect.getdoc(model) or ""
        if doc.startswith(("A base class", "!!! abstract")) or model.__doc__ is None:
            doc = ""
        out = [f"## {model.__name__}", ""]
        if doc:
            out += [doc.split("\n\n")[0].replace("\n", " ").replace("``", "`"), ""]
        out += ["| field | type | default | |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            if name in MANAGER_OWNED:
                continue
            alias = info.alias or name
            kind = self.type_of(info.annotation, list(info.metadata))
            note = comments.get(name, "").replace("``", "`").replace("|", "\\|")
            out.append(f"| `{alias}` | {kind} | {self.default(info)} | {note} |")
        return "\n".join(out) + "\n"


def spec_reference() -> str:
    from shoal.manifest import MODELS

    walk = _Walk()
    out = [
        "# Spec reference",
        "",
        "Every field a spec file may hold, generated from the models that validate it",
        "(`shoal/models/`) when this site was built. Fields are written in camelCase;",
        "unknown fields are errors, reported with their file and line. `status` is",
        "written by the manager only and left out here.",
        "",
        "Kinds: "
        + ", ".join(f"[{kind}](#{model.__name__.lower()})" for kind, model in MODELS.items()),
        "",
    ]
    for model in MODELS.values():
        walk.seen.append(model)
    done: set[type[BaseModel]] = set()
    while len(done) < len(walk.seen):
        model = next(m for m in walk.seen if m not in done)
        done.add(model)
        out.append(walk.table(model))
    return "\n".join(out)


# ------------------------------------------------------------------- CLI


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases name the same parser
                    seen.add(id(sub))
                    found.append((name, sub))
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        parser.print_help()
    return buffer.getvalue().rstrip()


def cli_reference() -> str:
    from shoal.cli.main import VERBS, build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; make it stable
    out = [
        "# CLI reference",
        "",
        "`--help` of every command, generated from the parser `shoal` itself builds",
        "(`shoal/cli/`) when this site was built. Exit codes: 0 success, 1 failure",
        "(refused, not found, unreachable, timed out), 2 wrong command line.",
        "",
        "A command's options go before, between or after its other arguments",
        "(`shoal get services web --server HOST:PORT` is `shoal get --server HOST:PORT",
        "services web`); with `shoal exec TASK -- COMMAND`, everything after `--` is the",
        "command's own.",
        "",
        "```text",
        _help(build_parser()),
        "```",
        "",
    ]
    for verb in VERBS:
        top = build_parser([verb.name])
        (parser,) = [p for name, p in _subparsers(top) if name == verb.name]
        stack = [(f"shoal {verb.name}", parser, 2)]
        while stack:
            title, current, level = stack.pop(0)
            out += [f"{'#' * level} {title}", "", "```text", _help(current), "```", ""]
            stack = [
                (f"{title} {name}", sub, min(level + 1, 4)) for name, sub in _subparsers(current)
            ] + stack
    return "\n".join(out)


# ------------------------------------------------------------------ hooks


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, SPEC_PAGE, content=spec_reference()))
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    return files


def _listed(items: list[Any]) -> set[str]:
    paths: set[str] = set()
    for item in items:
        if isinstance(item, Page):
            paths.add(item.file.src_uri)
        elif isinstance(item, Section):
            paths |= _listed(item.children)
    return paths


def on_nav(nav: Navigation, config: MkDocsConfig, files: Files) -> Navigation:
    listed = _listed(nav.items)
    extra = [Page(None, f, config) for f in files.documentation_pages() if f.src_uri not in listed]
    if extra:
        section = Section("More", extra)  # type: ignore[arg-type]
        nav.items.append(section)
        nav.pages.extend(extra)
    return nav
