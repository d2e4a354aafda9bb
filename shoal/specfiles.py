"""Spec files composed into located documents: the YAML side of ``shoal.manifest``.

Everything here is checked without the models (so without pydantic, which the
CLI's ``apply`` does not import: the manager validates what it is sent): the
files a path names, YAML syntax (a tab gets its own message), duplicate and
merge keys, aliases, documents over 1 MiB, ``apiVersion`` and ``kind``, and
list documents (``items:``). Each sound document comes back as a ``Located``:
its plain data and the node tree it was constructed from, which keeps the start
line of every key and value, so an error location (a field path such as
``("spec", "replicas")``, as pydantic gives it on either side of the wire) is
walked back down to the file, the line and the key as the user spelled it.

Problems are collected per file with their lines (``SpecFile.found``); the
caller adds its own (validation, duplicates) and reports them in line order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shoal.dependencies import cycle_message, dependency_order, distinct_cycles
from shoal.errors import SpecError

# The models' apiVersion (shoal.models.service.API_VERSION; tests/test_manifest.py
# checks that they agree) and the kinds a spec file may hold.
API_VERSION = "shoal/v1"
KINDS = "Config, Service, Sync"
KIND_NAMES = frozenset(KINDS.split(", "))
REFUSED_KINDS = {
    "Secret": "secrets are not written in spec files (their bytes would sit in the clear); "
    "create them with: shoal secret create NAME -f FILE",
}
MAX_DOCUMENT_BYTES = 1024 * 1024
YAML_SUFFIXES = (".yaml", ".yml")

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Values JSON cannot carry to the manager as they are, refused at their line.
_UNSENDABLE = {
    "tag:yaml.org,2002:timestamp": "a date or time; quote it in the YAML to make it a string",
    "tag:yaml.org,2002:binary": "!!binary is not allowed in a spec; write the text instead",
    "tag:yaml.org,2002:set": "!!set is not allowed in a spec; write a list instead",
    "tag:yaml.org,2002:omap": "!!omap is not allowed in a spec; write a mapping instead",
    "tag:yaml.org,2002:pairs": "!!pairs is not allowed in a spec; write a mapping instead",
}
_KEY_KINDS = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:int": "a number",
    _FLOAT_TAG: "a number",
    _NULL_TAG: "null",
    "tag:yaml.org,2002:timestamp": "a date",
}
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_UPPER = re.compile(r"(?<=[a-z0-9])([A-Z])")


def _camel(name: str) -> str:
    """``depends_on`` → ``dependsOn`` (the models' aliases)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _snake(name: str) -> str:
    """``dependsOn`` → ``depends_on`` (the models' field names)."""
    return _UPPER.sub(r"_\1", name).lower()


class Located:
    """One sound document of a spec file: its data and where each of its fields is."""

    __slots__ = ("data", "filename", "kind", "root", "where")

    def __init__(
        self, filename: str, root: MappingNode, where: list[str | int], kind: str, data: Any
    ) -> None:
        self.filename = filename
        self.root = root
        # The document's own path in its file's document (``items[2]`` of a list).
        self.where = where
        self.kind = kind
        self.data = data

    def line_of(self, loc: tuple[int | str, ...]) -> int:
        return locate_node(self.root, loc)[1]

    def problem(self, loc: tuple[int | str, ...], message: str) -> tuple[int, str]:
        """``(line, "file:line: field.path: message")`` for an error at ``loc``."""
        _, line, path = locate_node(self.root, loc)
        shown = _join(self.where, path)
        return line, f"{self.filename}:{line}: " + (f"{shown}: {message}" if shown else message)


class SpecFile:
    """One file's sound documents and its problems so far, each with its line."""

    __slots__ = ("documents", "filename", "found")

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.documents: list[Located] = []
        self.found: list[tuple[int, str]] = []

    def problems(self) -> list[str]:
        """The problems in line order (the order a reader meets them)."""
        return [problem for _, problem in sorted(self.found, key=lambda item: item[0])]


def read_paths(
    paths: list[Path], problems: list[str], relative_to: Path | None, allow_empty_dir: bool
) -> list[SpecFile]:
    """Every YAML file the paths name, composed; what cannot be read goes to ``problems``.

    With ``relative_to``, files are named relative to it in messages. A directory
    without YAML files is a problem unless ``allow_empty_dir``.
    """
    files = []
    for path in _expand(paths, problems, allow_empty_dir):
        shown = str(path.relative_to(relative_to)) if relative_to is not None else str(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            problems.append(f"{shown}:{line}: file is not valid UTF-8")
            continue
        except OSError as exc:
            problems.append(f"{shown}: cannot read: {exc.strerror or exc}")
            continue
        files.append(read_text(text, shown))
    return files


def read_text(text: str, filename: str) -> SpecFile:
    """The documents of one file's text, composed; ``filename`` is used in messages."""
    spec = SpecFile(filename)
    try:
        composer = _Composer(text)  # checks that every character is allowed in YAML
    except yaml.YAMLError as exc:
        spec.found.append((0, unmarked_problem(exc, text, filename)))
        return spec
    try:
        while True:
            try:
                if not composer.check_node():
                    break
                node = composer.get_node()
            except yaml.MarkedYAMLError as exc:
                spec.found.append(syntax_problem(exc, filename))
                break
            except yaml.YAMLError as exc:
                spec.found.append((0, unmarked_problem(exc, text, filename)))
                break
            except RecursionError:
                spec.found.append((0, f"{filename}: invalid YAML: nested too deeply"))
                break
            if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL_TAG):
                continue  # an empty document
            spec.documents.extend(_Document(filename, node, composer, text, spec.found).check())
    finally:
        composer.dispose()
    return spec


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


class _Document:
    """Checks one composed document and constructs its data."""

    def __init__(
        self,
        filename: str,
        root: Node,
        composer: _Composer,
        text: str,
        found: list[tuple[int, str]],
    ) -> None:
        self.filename = filename
        self.root = root
        self.composer = composer
        self.text = text
        self.found = found

    def report(self, line: int, path: str, message: str) -> None:
        prefix = f"{self.filename}:{line}: "
        self.found.append((line, prefix + (f"{path}: {message}" if path else message)))

    def check(self) -> list[Located]:
        """The sound documents, located; problems are reported."""
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
        documents: list[Located] = []
        for index, item in enumerate(items):
            where: list[str | int] = ["items", index]
            if not isinstance(item, MappingNode):
                self.report(
                    item.start_mark.line + 1,
                    format_path(where),
                    "expected a mapping with apiVersion, kind, metadata and spec",
                )
                continue
            checked = self._check_one(item, where, sound)
            if checked is not None:
                documents.append(checked)
        return documents

    def _items(self, root: MappingNode) -> list[Node] | None:
        """The items of a list document (``items:``, maybe ``kind: List``), else None."""
        entry = child(root, "items")
        kind = child(root, "kind")
        if entry is None or child(root, "spec") is not None:
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

    def _check_one(self, root: MappingNode, where: list[str | int], sound: bool) -> Located | None:
        """One object's data, located, or None after reporting problems."""
        kind = self._kind(root, where)
        if kind is None or not sound:
            return None
        try:
            data = self.composer.construct_document(root)
        except yaml.MarkedYAMLError as exc:
            self.found.append(syntax_problem(exc, self.filename))
            return None
        return Located(self.filename, root, where, kind, data)

    def _walk(self, node: Node, path: list[str | int]) -> bool:
        """Refuse duplicate keys, merge keys, keys that are not strings, and values JSON
        would change or cannot carry (dates, ``.inf``, ``!!binary``, …) anywhere in the tree."""
        sound = True
        problem = _UNSENDABLE.get(node.tag)
        if (
            problem is None
            and node.tag == _FLOAT_TAG
            and isinstance(node, ScalarNode)
            and node.value.lower().lstrip("+-") in (".inf", ".nan")
        ):
            problem = f"input should be a finite number (got {node.value})"
        if problem is not None:
            self.report(node.start_mark.line + 1, format_path(path), problem)
            return False
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                sound = self._walk(item, [*path, index]) and sound
        elif isinstance(node, MappingNode):
            first_lines: dict[tuple[str, Any], int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.tag == _MERGE_TAG:
                    self.report(line, format_path(path), "merge keys (<<) are not allowed")
                    sound = False
                    continue
                if not isinstance(key, ScalarNode):
                    self.report(line, format_path(path), "mapping keys must be plain scalars")
                    sound = False
                    continue
                here = [*path, key.value]
                if key.tag != _STR_TAG:  # JSON would turn it into text ("true", "1", "null")
                    shown = _KEY_KINDS.get(key.tag, "not a string")
                    self.report(
                        line,
                        format_path(here),
                        f"this key is {shown} in YAML; quote it in the YAML to make it a string",
                    )
                    sound = False
                    continue
                first = first_lines.get((key.tag, key.value))
                if first is None:
                    first_lines[(key.tag, key.value)] = line
                else:
                    self.report(
                        line,
                        format_path(here),
                        f"duplicate key {key.value!r} (first at line {first})",
                    )
                sound = self._walk(value, here) and sound
        return sound

    def _kind(self, root: MappingNode, where: list[str | int]) -> str | None:
        root_line = root.start_mark.line + 1
        version = child(root, "apiVersion")
        kind = child(root, "kind")
        expected_kinds = KINDS
        model: str | None = None
        if kind is None:
            self.report(
                root_line,
                _join(where, "kind"),
                f"required field is missing; expected {expected_kinds}",
            )
        elif isinstance(kind[1], ScalarNode) and kind[1].value in REFUSED_KINDS:
            self.report(
                kind[0].start_mark.line + 1, _join(where, "kind"), REFUSED_KINDS[kind[1].value]
            )
        elif not isinstance(kind[1], ScalarNode) or kind[1].value not in KIND_NAMES:
            shown = kind[1].value if isinstance(kind[1], ScalarNode) else "a collection"
            self.report(
                kind[0].start_mark.line + 1,
                _join(where, "kind"),
                f"unknown kind {shown!r}; expected {expected_kinds}",
            )
        else:
            model = str(kind[1].value)
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


def syntax_problem(exc: yaml.MarkedYAMLError, filename: str) -> tuple[int, str]:
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


def unmarked_problem(exc: yaml.YAMLError, text: str, filename: str) -> str:
    """A YAML error without a mark, e.g. the reader's refusal of a control character."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return f"{filename}: invalid YAML: {exc}"
    line = text[:position].count("\n") + 1
    reason = getattr(exc, "reason", None) or exc
    return f"{filename}:{line}: invalid YAML: {reason} (character {text[position]!r})"


def child(node: MappingNode, name: str | int) -> tuple[Node, Node] | None:
    """The last (key, value) whose key is ``name``, in camelCase or snake_case."""
    names = {str(name)}
    if isinstance(name, str):
        names |= {_camel(name), _snake(name)}
    match = None
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.value in names:
            match = (key, value)
    return match


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
        if isinstance(node, MappingNode) and (entry := child(node, element)) is not None:
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
    return marker, line, format_path(path)


def _join(where: list[str | int], path: str) -> str:
    """``items[2]`` + ``spec.replicas`` → ``items[2].spec.replicas``."""
    prefix = format_path(where)
    if not prefix or not path:
        return prefix or path
    return prefix + (path if path.startswith("[") else "." + path)


def format_path(path: list[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def yaml_files(path: Path) -> list[Path]:
    """The YAML files under a directory, recursively, in a stable order."""
    return sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())


T = TypeVar("T")


def describe_data(document: Any) -> tuple[str, str | None, list[Any]]:
    """A document's kind, its name (None if not a string) and the services its
    ``spec.dependsOn`` names, read from its data (what is amiss is left to validation)."""
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    spec = document.get("spec")
    entries = (spec.get("dependsOn") or spec.get("depends_on")) if isinstance(spec, dict) else None
    listed = entries if isinstance(entries, list) else []  # what else it is: validation says
    services = [e.get("service") if isinstance(e, dict) else None for e in listed]
    return str(document.get("kind")), name if isinstance(name, str) else None, services


class Checks(Generic[T]):
    """What is checked across the documents of one load: names defined twice, and
    dependency cycles. ``describe`` tells a document's kind, name and dependencies
    (the documents are models in ``shoal.manifest``, data in the CLI's ``apply``)."""

    def __init__(self, describe: Callable[[T], tuple[str, str | None, list[Any]]]) -> None:
        self.describe = describe
        self.problems: list[str] = []
        self.seen: dict[tuple[str, str], str] = {}
        # Service name → "file:line" of each of its ``spec.dependsOn`` entries.
        self.dependency_lines: dict[str, list[str]] = {}

    def raise_problems(self) -> None:
        if self.problems:
            raise SpecError(self.problems)

    def file(self, spec: SpecFile, documents: list[tuple[Located, T]]) -> list[T]:
        """``spec``'s problems in line order, then each document whose name is new."""
        self.problems += spec.problems()
        unique = []
        for located, document in documents:
            kind, name, services = self.describe(document)
            if name is None:
                unique.append(document)
                continue
            where = f"{located.filename}:{located.line_of(('metadata', 'name'))}"
            first = self.seen.get((kind, name))
            if first is not None:
                self.problems.append(
                    f"{where}: metadata.name: duplicate {kind} name {name!r} "
                    f"(first defined at {first})"
                )
                continue
            self.seen[(kind, name)] = where
            if kind == "Service":
                self.dependency_lines[name] = [
                    f"{located.filename}:{located.line_of(('spec', 'dependsOn', i))}"
                    for i in range(len(services))
                ]
            unique.append(document)
        return unique

    def in_dependency_order(self, documents: list[T]) -> list[T]:
        """Services after the services they depend on (``shoal.dependencies``); a cycle
        among them is a problem, reported at the entry that closes it."""
        services: dict[str, T] = {}
        graph: dict[str, list[str]] = {}
        for document in documents:
            kind, name, needs = self.describe(document)
            if kind == "Service" and name is not None:
                services[name] = document
                graph[name] = [n for n in needs if isinstance(n, str)]
        for name, index, cycle in distinct_cycles(graph, list(services)):
            where = self.dependency_lines[name][index]
            self.problems.append(
                f"{where}: spec.dependsOn[{index}].service: {cycle_message(cycle)}"
            )
        self.raise_problems()
        ordered = iter(services[n] for n in dependency_order(list(services), graph))
        return [
            next(ordered) if self.describe(d)[0] == "Service" and self.describe(d)[1] else d
            for d in documents
        ]


def place(
    problems: list[Any], documents: list[Located], configs: list[Located], files: list[str]
) -> list[str]:
    """The manager's problems with sent documents (``Control.Apply`` with ``locate``:
    ``{"document" | "config": N, "loc", "message"}``) as ``file:line: field: message``,
    file by file in the order of ``files``, each file's in line order."""
    found: dict[str, list[tuple[int, str]]] = {name: [] for name in files}
    for problem in problems:
        sent, index = (
            (configs, problem.get("config"))
            if "config" in problem
            else (
                documents,
                problem.get("document"),
            )
        )
        message = str(problem.get("message", ""))
        if not isinstance(index, int) or not 0 <= index < len(sent):
            found.setdefault("", []).append((0, message))
            continue
        loc = tuple(e for e in problem.get("loc") or () if isinstance(e, str | int))
        located = sent[index]
        found.setdefault(located.filename, []).append(located.problem(loc, message))
    return [text for lines in found.values() for _, text in sorted(lines, key=lambda i: i[0])]
