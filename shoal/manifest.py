"""Loading spec documents from YAML, with every problem pinned to a file and line.

Users apply whole directories of YAML; one wrong indent or typo should produce
one precise message (``web.yaml:14: spec.template.stopGracePeriod: invalid
duration '5x'``), not a pydantic traceback, and an apply must be all or
nothing. So every file is first *composed* into PyYAML's node tree, which keeps
the start line of every key and value, and only then constructed into plain
data and validated by the models. A pydantic error's ``loc`` is walked back down
the node tree to find the line and the key as the user spelled it. Problems from
all documents of all files are collected and raised as one ``SpecError``.

A few things PyYAML accepts are refused before validation, because they are
either mistakes or hazards in a spec: duplicate keys in one mapping (PyYAML
silently keeps the last one), merge keys (``<<``), documents over 1 MiB, and
aliases (``*name``). Aliases are refused outright rather than limited: a spec
has no need for them, and a few lines of nested aliases ("billion laughs")
expand into an exponentially large structure once something walks it. The
composer below never resolves an alias to its anchored node, so the tree stays
a small tree whatever the input.

``_KINDS`` maps a kind (``Service``, ``Sync``, and ``Config`` for configs
written as documents) to its model; a new kind is one more entry there.
``kind: Secret`` is refused with a pointer to ``shoal secret create``: a
secret's bytes have no place in a spec directory or a git repository. A
document may also be a list, ``items: [...]`` (optionally with ``kind:
List``), which is what ``shoal get -o yaml`` prints: each item is checked as
a document of its own, its problems located at ``items[N]....``. Fields the
manager writes (``status``, ``metadata.generation`` and the times) are
accepted and ignored by apply, so ``get -o yaml`` output can be applied back
unchanged.

The documents come back with every Service after the Services it names in
``spec.dependsOn`` (``shoal.dependencies``); a cycle among them is a problem
reported at the ``dependsOn`` entry of the first member, like any other.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import ErrorDetails
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shoal.dependencies import cycle_message, dependency_order, distinct_cycles
from shoal.errors import SpecError
from shoal.models.secret import ConfigDocument
from shoal.models.service import API_VERSION, Service
from shoal.models.sync import Sync

MAX_DOCUMENT_BYTES = 1024 * 1024
YAML_SUFFIXES = (".yaml", ".yml")

# A document of a spec file, and kind -> the model that validates it (all share API_VERSION).
Document = Service | ConfigDocument | Sync
DocumentModel = type[Service] | type[ConfigDocument] | type[Sync]
_KINDS: dict[str, DocumentModel] = {"Service": Service, "Config": ConfigDocument, "Sync": Sync}
_REFUSED_KINDS = {
    "Secret": "secrets are not written in spec files (their bytes would sit in the clear); "
    "create them with: shoal secret create NAME -f FILE",
}

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def load_paths(
    paths: list[Path], relative_to: Path | None = None, allow_empty_dir: bool = False
) -> list[Document]:
    """Load every document of every file; directories are searched recursively for YAML.

    Raises ``SpecError`` listing every problem found; nothing is returned unless
    all documents are valid. With ``relative_to``, files are named relative to
    it in messages (a git checkout names ``services/web.yaml``, not its cache
    path). A directory without YAML files is a problem unless ``allow_empty_dir``.
    """
    load = _Load()
    documents: list[Document] = []
    for path in _expand(paths, load.problems, allow_empty_dir):
        shown = str(path.relative_to(relative_to)) if relative_to is not None else str(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            load.problems.append(f"{shown}:{line}: file is not valid UTF-8")
            continue
        except OSError as exc:
            load.problems.append(f"{shown}: cannot read: {exc.strerror or exc}")
            continue
        documents.extend(load.file(text, shown))
    load.raise_problems()
    return load.in_dependency_order(documents)


def yaml_files(path: Path) -> list[Path]:
    """The YAML files under a directory, recursively, in a stable order."""
    return sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())


def load_text(text: str, filename: str) -> list[Document]:
    """Load the documents of one file's text; ``filename`` is used in messages."""
    load = _Load()
    services = load.file(text, filename)
    load.raise_problems()
    return load.in_dependency_order(services)


def dump_services(services: Iterable[Document]) -> str:
    """Multi-document YAML in wire form; ``load_text`` reads it back to equal models."""
    return yaml.safe_dump_all(
        [service.to_wire() for service in services],
        explicit_start=True,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=float("inf"),
    )


def _expand(paths: list[Path], problems: list[str], allow_empty_dir: bool) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = yaml_files(path)
            if not found and not allow_empty_dir:
                problems.append(f"{path}: no *.yaml or *.yml files in this directory")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    return files


class _Composer(yaml.SafeLoader):
    """A SafeLoader that notes where each document starts and never follows an alias."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.document_start: Mark | None = None
        self.aliases: list[Mark] = []

    # types-PyYAML leaves the parser's event methods untyped, hence the ignores.
    def compose_document(self) -> Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        self.document_start = event.start_mark
        self.aliases = []
        return super().compose_document()

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.get_event()  # type: ignore[no-untyped-call]
            self.aliases.append(event.start_mark)
            # A fresh null in place of the anchored node: the tree stays a tree.
            return ScalarNode(_NULL_TAG, "", event.start_mark, event.end_mark)
        return super().compose_node(parent, index)


@dataclass
class _Load:
    """One load: the problems found so far and the names already defined."""

    problems: list[str] = field(default_factory=list)
    seen: dict[tuple[str, str], str] = field(default_factory=dict)
    # Service name → "file:line" of each of its ``spec.dependsOn`` entries.
    dependency_lines: dict[str, list[str]] = field(default_factory=dict)

    def raise_problems(self) -> None:
        if self.problems:
            raise SpecError(self.problems)

    def in_dependency_order(self, documents: list[Document]) -> list[Document]:
        """Services after the services they depend on (``shoal.dependencies``); a cycle
        among them is a problem, reported at the entry that closes it."""
        services = {d.name: d for d in documents if isinstance(d, Service)}
        graph = {name: [dep.service for dep in s.spec.depends_on] for name, s in services.items()}
        for name, index, cycle in distinct_cycles(graph, list(services)):
            where = self.dependency_lines[name][index]
            self.problems.append(
                f"{where}: spec.dependsOn[{index}].service: {cycle_message(cycle)}"
            )
        self.raise_problems()
        ordered = iter(services[n] for n in dependency_order(list(services), graph))
        return [next(ordered) if isinstance(d, Service) else d for d in documents]

    def file(self, text: str, filename: str) -> list[Document]:
        found: list[tuple[int, str]] = []
        services: list[tuple[Document, int, list[int]]] = []
        try:
            composer = _Composer(text)  # checks that every character is allowed in YAML
        except yaml.YAMLError as exc:
            self.problems.append(_unmarked_problem(exc, text, filename))
            return []
        try:
            while True:
                try:
                    if not composer.check_node():
                        break
                    node = composer.get_node()
                except yaml.MarkedYAMLError as exc:
                    found.append(_syntax_problem(exc, filename))
                    break
                except yaml.YAMLError as exc:
                    found.append((0, _unmarked_problem(exc, text, filename)))
                    break
                except RecursionError:
                    found.append((0, f"{filename}: invalid YAML: nested too deeply"))
                    break
                if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
                    continue  # an empty document
                services.extend(_Document(filename, node, composer, text, found).check())
        finally:
            composer.dispose()
        self.problems.extend(problem for _, problem in sorted(found, key=lambda item: item[0]))
        return self._unique(services, filename)

    def _unique(
        self, services: list[tuple[Document, int, list[int]]], filename: str
    ) -> list[Document]:
        unique: list[Document] = []
        for service, name_line, dependency_lines in services:
            key = (service.kind, service.name)
            where = f"{filename}:{name_line}"
            first = self.seen.get(key)
            if first is not None:
                self.problems.append(
                    f"{where}: metadata.name: duplicate {service.kind} name {service.name!r} "
                    f"(first defined at {first})"
                )
                continue
            self.seen[key] = where
            if isinstance(service, Service):
                self.dependency_lines[service.name] = [f"{filename}:{n}" for n in dependency_lines]
            unique.append(service)
        return unique


@dataclass
class _Document:
    """Checks one composed document and validates it with its kind's model."""

    filename: str
    root: Node
    composer: _Composer
    text: str
    found: list[tuple[int, str]]

    def report(self, line: int, path: str, message: str) -> None:
        prefix = f"{self.filename}:{line}: "
        self.found.append((line, prefix + (f"{path}: {message}" if path else message)))

    def check(self) -> list[tuple[Document, int, list[int]]]:
        """The valid models, the lines of their names and of their ``dependsOn`` entries;
        problems are reported."""
        start = self.composer.document_start or self.root.start_mark
        start_line = start.line + 1
        size = len(self.text[start.index : self.root.end_mark.index].encode())
        if size > MAX_DOCUMENT_BYTES:
            self.report(
                start_line, "", f"document is {size} bytes; the limit is 1 MiB per document"
            )
            return []
        sound = True
        for mark in self.composer.aliases:
            self.report(
                mark.line + 1, "", "YAML aliases (*name) are not allowed; write the value out"
            )
            sound = False
        root = self.root
        if not isinstance(root, MappingNode):
            shape = "a list" if isinstance(root, SequenceNode) else f"the scalar {root.value!r}"
            self.report(
                start_line,
                "",
                f"document is {shape}; expected a mapping with apiVersion, kind, metadata and spec",
            )
            return []
        sound = self._walk(root, []) and sound
        items = self._items(root)
        if items is None:
            checked = self._check_one(root, [], sound)
            return [checked] if checked is not None else []
        documents: list[tuple[Document, int, list[int]]] = []
        for index, item in enumerate(items):
            where: list[str | int] = ["items", index]
            if not isinstance(item, MappingNode):
                self.report(
                    item.start_mark.line + 1,
                    _format_path(where),
                    "expected a mapping with apiVersion, kind, metadata and spec",
                )
                continue
            checked = self._check_one(item, where, sound)
            if checked is not None:
                documents.append(checked)
        return documents

    def _items(self, root: MappingNode) -> list[Node] | None:
        """The items of a list document (``items:``, maybe ``kind: List``), else None."""
        entry = _child(root, "items")
        kind = _child(root, "kind")
        if entry is None or _child(root, "spec") is not None:
            return None
        if kind is not None and not (isinstance(kind[1], ScalarNode) and kind[1].value == "List"):
            return None
        for key, _ in root.value:
            if isinstance(key, ScalarNode) and key.value not in ("items", "kind", "apiVersion"):
                self.report(
                    key.start_mark.line + 1,
                    key.value,
                    "unknown field in a list document (allowed: apiVersion, kind, items)",
                )
        if not isinstance(entry[1], SequenceNode):
            self.report(entry[0].start_mark.line + 1, "items", "expected a list of documents")
            return []
        return list(entry[1].value)

    def _check_one(
        self, root: MappingNode, where: list[str | int], sound: bool
    ) -> tuple[Document, int, list[int]] | None:
        """One object's model, the lines of its name and its ``dependsOn`` entries, or None
        after reporting problems."""
        model = self._kind(root, where)
        if model is None or not sound:
            return None
        try:
            data = self.composer.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            self.found.append(_syntax_problem(exc, self.filename))
            return None
        try:
            document = model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                line, path = _locate(root, error["loc"])
                self.report(line, _join(where, path), _message(error, model))
            return None
        dependencies = document.spec.depends_on if isinstance(document, Service) else []
        lines = [_locate(root, ("spec", "dependsOn", i))[0] for i in range(len(dependencies))]
        return document, _locate(root, ("metadata", "name"))[0], lines

    def _walk(self, node: Node, path: list[str | int]) -> bool:
        """Refuse duplicate keys, merge keys and non-scalar keys anywhere in the tree."""
        sound = True
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                sound = self._walk(item, [*path, index]) and sound
        elif isinstance(node, MappingNode):
            first_lines: dict[tuple[str, Any], int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.tag == _MERGE_TAG:
                    self.report(line, _format_path(path), "merge keys (<<) are not allowed")
                    sound = False
                    continue
                if not isinstance(key, ScalarNode):
                    self.report(line, _format_path(path), "mapping keys must be plain scalars")
                    sound = False
                    continue
                here = [*path, key.value]
                first = first_lines.get((key.tag, key.value))
                if first is None:
                    first_lines[(key.tag, key.value)] = line
                else:
                    self.report(
                        line,
                        _format_path(here),
                        f"duplicate key {key.value!r} (first at line {first})",
                    )
                sound = self._walk(value, here) and sound
        return sound

    def _kind(self, root: MappingNode, where: list[str | int]) -> DocumentModel | None:
        root_line = root.start_mark.line + 1
        version = _child(root, "apiVersion")
        kind = _child(root, "kind")
        expected_kinds = ", ".join(sorted(_KINDS))
        model: DocumentModel | None = None
        if kind is None:
            self.report(
                root_line,
                _join(where, "kind"),
                f"required field is missing; expected {expected_kinds}",
            )
        elif isinstance(kind[1], ScalarNode) and kind[1].value in _REFUSED_KINDS:
            self.report(
                kind[0].start_mark.line + 1, _join(where, "kind"), _REFUSED_KINDS[kind[1].value]
            )
        elif not isinstance(kind[1], ScalarNode) or kind[1].value not in _KINDS:
            shown = kind[1].value if isinstance(kind[1], ScalarNode) else "a collection"
            self.report(
                kind[0].start_mark.line + 1,
                _join(where, "kind"),
                f"unknown kind {shown!r}; expected {expected_kinds}",
            )
        else:
            model = _KINDS[kind[1].value]
        if version is None:
            self.report(
                root_line,
                _join(where, "apiVersion"),
                f"required field is missing; expected {API_VERSION!r}",
            )
            return None
        if not isinstance(version[1], ScalarNode) or version[1].value != API_VERSION:
            shown = version[1].value if isinstance(version[1], ScalarNode) else "a collection"
            self.report(
                version[0].start_mark.line + 1,
                _join(where, "apiVersion"),
                f"unsupported apiVersion {shown!r}; expected {API_VERSION!r}",
            )
            return None
        return model


def _syntax_problem(exc: yaml.MarkedYAMLError, filename: str) -> tuple[int, str]:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    if "'\\t'" in str(exc.problem) and mark is not None:
        # PyYAML's own words ("found character '\t' that cannot start any token") do
        # not say what to do.
        return line, (
            f"{filename}:{line}: invalid YAML: a tab at column {mark.column + 1}; "
            "YAML indents with spaces only: replace the tab with spaces"
        )
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return line, f"{filename}:{line}: {message}"


def _unmarked_problem(exc: yaml.YAMLError, text: str, filename: str) -> str:
    """A YAML error without a mark, e.g. the reader's refusal of a control character."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return f"{filename}: invalid YAML: {exc}"
    line = text[:position].count("\n") + 1
    reason = getattr(exc, "reason", None) or exc
    return f"{filename}:{line}: invalid YAML: {reason} (character {text[position]!r})"


def _child(node: MappingNode, name: str | int) -> tuple[Node, Node] | None:
    """The last (key, value) whose key is ``name``, in camelCase or snake_case."""
    names = {str(name)}
    if isinstance(name, str):
        names |= {to_camel(name), to_snake(name)}
    match = None
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value in names:
            match = (key, value)
    return match


def _locate(root: Node, loc: tuple[int | str, ...]) -> tuple[int, str]:
    """The line and the user-spelled field path for a pydantic error location."""
    _, line, path = locate_node(root, loc)
    return line, path


def locate_node(root: Node, loc: tuple[int | str, ...]) -> tuple[Node, int, str]:
    """The node that marks the line (a key, or a list item), that line, and the
    user-spelled field path for a pydantic error location.

    Follows ``loc`` down the node tree as far as it exists; a missing field is
    reported at the line of the mapping that lacks it. The node's mark names
    its file, for loaders that merge several files into one tree
    (``shoal.compose``).
    """
    node = marker = root
    line = root.start_mark.line + 1
    path: list[str | int] = []
    for depth, element in enumerate(loc):
        if element == "[key]":
            break  # the dict key itself is wrong: path and line already point at it
        if isinstance(node, MappingNode) and (entry := _child(node, element)) is not None:
            key, node = entry
            path.append(key.value)
            marker = key
            line = key.start_mark.line + 1
        elif (
            isinstance(node, SequenceNode)
            and isinstance(element, int)
            and 0 <= element < len(node.value)
        ):
            node = marker = node.value[element]
            path.append(element)
            line = node.start_mark.line + 1
        else:
            path.extend(e for e in loc[depth:] if e != "[key]")
            break
    return marker, line, _format_path(path)


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """``field.path: message`` for each error, worded as the loader words them.

    For specs that arrive without their YAML (the manager validating an apply):
    the same messages, without a file and line.
    """
    problems = []
    for error in exc.errors():
        path = _format_path(list(error["loc"]))
        message = _message(error, model)
        problems.append(f"{path}: {message}" if path else message)
    return problems


def _join(where: list[str | int], path: str) -> str:
    """``items[2]`` + ``spec.replicas`` → ``items[2].spec.replicas``."""
    prefix = _format_path(where)
    if not prefix or not path:
        return prefix or path
    return prefix + (path if path.startswith("[") else "." + path)


def _format_path(path: list[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _message(error: ErrorDetails, model: type[BaseModel]) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return f"unknown field {loc[-1]!r}{_suggest(model, loc)}"
    message = error["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and repr(value) not in message:
        message += f" (got {value!r})"
    if kind == "string_type" and isinstance(value, int | float | bool):
        message += "; quote it in the YAML to make it a string"
    return message


def _suggest(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """`` (did you mean 'x'?)`` or `` (allowed: ...)`` for an unknown field."""
    current: Any = model
    for element in loc[:-1]:
        fields = _fields(current)
        info = fields.get(str(element))
        if info is None:
            return ""
        current = info
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return ""
    allowed = [info.alias or name for name, info in current.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(allowed)})"


def _fields(model: Any) -> dict[str, Any]:
    """Wire name (and Python name) -> the nested model type, for a pydantic model."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return {}
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[info.alias or name] = fields[name] = _nested_model(info.annotation)
    return fields


def _nested_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


# The same marks and wording for other loaders of YAML (``shoal.compose``).
format_path = _format_path
error_message = _message
syntax_problem = _syntax_problem
unmarked_problem = _unmarked_problem
child = _child
