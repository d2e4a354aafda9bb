"""Loading a stack: Compose files in, shoal documents and a report of every key out.

The steps, each reporting problems as ``FILE:LINE: field.path: message``:

1. read each file into a node tree (``shoal.compose.yamltree``), marks kept;
2. interpolate every value from the environment and the ``.env`` file beside
   the first file (the environment wins);
3. merge the files, later ones over earlier ones;
4. sift the keys through ``shoal.compose.keys``: what is ignored or not
   applied is taken out and noted, what is refused is a problem, extension
   keys (``x-…``) are dropped;
5. validate what is left with the Compose models (``shoal.compose.models``);
6. convert to shoal's documents (``shoal.compose.convert``), which validates
   them with shoal's own models.

Any problem anywhere and ``SpecError`` lists them all: nothing is deployed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode

from shoal.compose import keys, yamltree
from shoal.compose.convert import Converted, Converter, SecretFile, Where
from shoal.compose.interpolate import InterpolationError, Interpolator, parse_env_file
from shoal.compose.models import ComposeFile
from shoal.errors import SpecError
from shoal.manifest import error_message, format_path, locate_node
from shoal.models.secret import ConfigDocument
from shoal.models.service import DNS_LABEL, Service

__all__ = ["Note", "SecretFile", "Stack", "load_stack", "stack_name_from"]


@dataclass(frozen=True, slots=True)
class Note:
    """A key shoal did not apply (ignored or not applied), and why."""

    file: str
    line: int
    path: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.kind}: {self.reason}"


@dataclass
class Stack:
    name: str
    services: list[Service]
    configs: list[ConfigDocument]
    secrets: list[SecretFile]
    external_secrets: list[str]
    external_configs: list[str]
    compose_names: dict[str, str]
    notes: list[Note] = field(default_factory=list)


def stack_name_from(directory: Path) -> str:
    """A default stack name from a directory's name, as Compose derives a project name."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    return name[:40].strip("-")


@dataclass
class _Load:
    shown: list[str]
    problems: yamltree.Problems
    notes: list[Note] = field(default_factory=list)

    def note(self, node: Node, path: Where, kind: str, reason: str) -> None:
        self.notes.append(
            Note(
                node.start_mark.name,
                node.start_mark.line + 1,
                format_path(list(path)),
                kind,
                reason,
            )
        )


def load_stack(
    files: list[Path],
    stack: str | None,
    environ: Mapping[str, str],
    shown: list[str] | None = None,
) -> Stack:
    """The stack the Compose ``files`` describe, or ``SpecError`` with every problem.

    ``stack`` defaults to the files' ``name:``, else the first file's directory
    name; ``shown`` are the files' names in messages (default: as given).
    """
    names = shown or [str(f) for f in files]
    load = _Load(names, yamltree.Problems(files=list(names)))
    problems = load.problems
    texts: list[str] = []
    for file, name in zip(files, names, strict=True):
        try:
            texts.append(file.read_bytes().decode("utf-8-sig"))
        except FileNotFoundError:
            problems.add(None, "", "no such file", file=name)
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            problems.add_text(name, line, f"{name}:{line}: file is not valid UTF-8")
        except OSError as exc:
            problems.add(None, "", f"cannot read: {exc.strerror or exc}", file=name)
    if problems:
        raise SpecError(problems.texts())
    project_dir = files[0].resolve().parent
    variables = _variables(project_dir, environ, problems)
    interpolator = Interpolator(variables)
    roots: list[MappingNode] = []
    for text, name in zip(texts, names, strict=True):
        root = yamltree.read(text, name, problems)
        if root is not None:
            roots.append(root)
    if problems:
        raise SpecError(problems.texts())
    for root in roots:
        _interpolate(root, interpolator, load)
    merged = roots[0]
    for later in roots[1:]:
        merged = yamltree.merge(merged, later)
    yamltree.strip_tags(merged)
    _sift(merged, (), load, set())
    if problems:  # a value that cannot be interpolated, a refused key: nothing to validate
        raise SpecError(problems.texts())
    data = copy.deepcopy(yamltree.construct(merged))
    compose: ComposeFile | None = None
    try:
        compose = ComposeFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            node, line, field_path = locate_node(merged, error["loc"])
            problems.add(node, field_path, error_message(error, ComposeFile), line=line)
    if problems or compose is None:
        raise SpecError(problems.texts())
    name = _stack_name(stack, compose, merged, project_dir, problems)
    if problems:
        raise SpecError(problems.texts())

    def problem(where: Where, message: str) -> None:
        node, line, path = locate_node(merged, where)
        problems.add(node, path, message, line=line)

    def note(where: Where, kind: str, reason: str) -> None:
        node, line, path = locate_node(merged, where)
        load.notes.append(Note(node.start_mark.name, line, path, kind, reason))

    def service_error(origins: Mapping[tuple[str | int, ...], Where], exc: ValidationError) -> None:
        for error in exc.errors():
            loc = tuple(error["loc"])
            prefix = max((p for p in origins if loc[: len(p)] == p), key=len, default=None)
            where: Where = origins[prefix] if prefix is not None else ("services",)
            rest = loc[len(prefix) :] if prefix is not None else loc
            node, line, path = locate_node(merged, where)
            # Where the key is, and shoal's field below it that refused the value.
            field_path = f"{path} ({format_path(list(loc))})" if rest else path
            problems.add(node, field_path, error_message(error, Service), line=line)

    converted: Converted = Converter(
        stack=name,
        compose=compose,
        project_dir=project_dir,
        environ=environ,
        variables=variables,
        interpolate=interpolator,
        problem=problem,
        note=note,
        service_error=service_error,
    ).run()
    if problems:
        raise SpecError(problems.texts())
    return Stack(
        name=name,
        services=converted.services,
        configs=converted.configs,
        secrets=converted.secrets,
        external_secrets=converted.external_secrets,
        external_configs=converted.external_configs,
        compose_names=converted.compose_names,
        notes=sorted(
            load.notes, key=lambda n: (names.index(n.file) if n.file in names else 0, n.line)
        ),
    )


def _variables(
    project_dir: Path, environ: Mapping[str, str], problems: yamltree.Problems
) -> dict[str, str]:
    """The interpolation variables: ``.env`` beside the first file, overridden by ``environ``."""
    dotenv = project_dir / ".env"
    values: dict[str, str] = {}
    if dotenv.is_file():
        shown = str(dotenv)
        try:
            text = dotenv.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.add(None, "", f"cannot read: {exc}", file=shown)
            return dict(environ)
        seen: dict[str, str] = {}

        def lookup(value: str) -> str:
            return Interpolator({**seen, **environ})(value)

        def report(line: int, message: str) -> None:
            problems.add_text(shown, line, f"{shown}:{line}: {message}")

        values = parse_env_file(text, lookup, environ, report, values=seen)
    return {**values, **environ}


def _interpolate(root: MappingNode, interpolator: Interpolator, load: _Load) -> None:
    def apply(text: str, node: Node, path: Where) -> str:
        before = len(interpolator.unset)
        try:
            value = interpolator(text)
        except InterpolationError as exc:
            raise ValueError(str(exc)) from exc
        for name in interpolator.unset[before:]:
            load.note(node, path, "ignored", f"variable {name} is not set: a blank string is used")
        return value

    yamltree.interpolate(root, apply, load.problems)


def _sift(node: Node, path: Where, load: _Load, seen: set[int]) -> None:
    """Take ignored and not-applied keys out (noted), refuse refused ones, drop ``x-`` keys."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        kept: list[tuple[Node, Node]] = []
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else ""
            here = (*path, name)
            if (
                isinstance(name, str)
                and name.startswith("x-")
                and keys.shape(here) != (*keys.S, "x-shoal")
            ):
                continue
            verdict = keys.verdict(here)
            if verdict is not None and verdict.kind in ("ignored", "not applied"):
                load.note(key, here, verdict.kind, verdict.reason)
                continue
            if verdict is not None and verdict.kind == "refused":
                load.problems.add(key, here, f"refused: {verdict.reason}")
                continue
            if keys.shape(here) != (*keys.S, "x-shoal"):
                _sift(value, here, load, seen)
            kept.append((key, value))
        node.value = kept
    elif hasattr(node, "value") and isinstance(node.value, list):
        for index, item in enumerate(node.value):
            _sift(item, (*path, index), load, seen)


def _stack_name(
    given: str | None,
    compose: ComposeFile,
    root: MappingNode,
    project_dir: Path,
    problems: yamltree.Problems,
) -> str:
    name = given or compose.name or stack_name_from(project_dir)
    if not DNS_LABEL.match(name):
        where = None if given or not compose.name else locate_node(root, ("name",))[0]
        problems.add(
            where,
            "name" if where is not None else "",
            f"invalid stack name {name!r}: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
            file="" if where is not None else "stack",
        )
    return name
