"""Compose files as PyYAML node trees: read, checked, interpolated and merged with marks kept.

Every node keeps the mark of where it starts, and every mark names its file,
so a value that came from the second ``-c`` file is reported at that file's
line after the files are merged. Unlike shoal's own spec files, Compose files
use anchors, aliases and merge keys (``<<: *defaults``) as a matter of course,
so they are allowed here: an alias stands for its anchored node (the tree
becomes a graph that shares nodes), merge keys are flattened into their
mappings, and the number of nodes the graph expands to is capped, so a few
lines of nested aliases cannot make anything walk an exponential structure.
Duplicate keys in one mapping are refused, as in spec files.

Several files merge as ``docker compose`` merges them: mappings key by key;
a later file's scalar replaces the earlier one; ``command``, ``entrypoint``
and ``healthcheck.test`` are replaced whole; ``environment``, ``labels``,
``sysctls``, ``depends_on``, ``networks``, ``deploy.labels`` and the like
merge as mappings even when one side writes them as a list; ``ports``,
``volumes``, ``secrets`` and ``configs`` merge by what they are attached to
(their target); other lists are appended, without repeating an equal item. The
Compose tags ``!reset`` (drop what earlier files set) and ``!override``
(replace instead of merging) are honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from shoal.manifest import MAX_DOCUMENT_BYTES, format_path, syntax_problem, unmarked_problem

# An aliased graph may expand to at most this many nodes.
MAX_EXPANDED_NODES = 200_000
RESET_TAG = "!reset"
OVERRIDE_TAG = "!override"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"

Path = tuple[str | int, ...]


@dataclass(order=True)
class Problem:
    """One problem, sortable into file order then line order."""

    file_index: int
    line: int
    text: str = field(compare=False)


@dataclass
class Problems:
    """The problems of one load, worded ``FILE:LINE: field.path: message``."""

    files: list[str] = field(default_factory=list)
    found: list[Problem] = field(default_factory=list)

    def add(
        self, node: Node | None, path: Path | str, message: str, file: str = "", line: int = 0
    ) -> None:
        """A problem at ``node``'s file and line (or ``line`` of that file, when given)."""
        shown_path = path if isinstance(path, str) else format_path(list(path))
        if node is not None:
            file = node.start_mark.name
            line = line or node.start_mark.line + 1
            where = f"{file}:{line}: "
        else:
            line = 0
            where = f"{file}: " if file else ""
        self.found.append(
            Problem(
                self._index(file), line, where + (f"{shown_path}: " if shown_path else "") + message
            )
        )

    def add_text(self, file: str, line: int, text: str) -> None:
        self.found.append(Problem(self._index(file), line, text))

    def _index(self, file: str) -> int:
        return self.files.index(file) if file in self.files else len(self.files)

    def texts(self) -> list[str]:
        return [p.text for p in sorted(self.found)]

    def __bool__(self) -> bool:
        return bool(self.found)


class _Loader(yaml.SafeLoader):
    """A SafeLoader whose marks carry the file's name as the user knows it."""

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


def read(text: str, name: str, problems: Problems) -> MappingNode | None:
    """The root mapping of one Compose file, merge keys flattened; None after a problem."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        problems.add(None, "", "file is larger than 1 MiB", file=name)
        return None
    try:
        loader = _Loader(text, name)
    except yaml.YAMLError as exc:
        problems.add_text(name, 0, unmarked_problem(exc, text, name))
        return None
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        line, message = syntax_problem(exc, name)
        problems.add_text(name, line, message)
        return None
    except yaml.YAMLError as exc:
        problems.add_text(name, 0, unmarked_problem(exc, text, name))
        return None
    except RecursionError:
        problems.add_text(name, 0, f"{name}: invalid YAML: nested too deeply")
        return None
    finally:
        loader.dispose()
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
        problems.add(None, "", "the file is empty; expected a mapping with services", file=name)
        return None
    if not isinstance(root, MappingNode):
        problems.add(root, "", "expected a mapping with services at the top of the file")
        return None
    if _expanded_size(root) > MAX_EXPANDED_NODES:
        problems.add(
            root, "", f"the file expands to more than {MAX_EXPANDED_NODES} nodes through aliases"
        )
        return None
    if not _check_keys(root, (), problems, set()):
        return None
    flattener = yaml.SafeLoader("")
    try:
        for node in _distinct(root):
            if isinstance(node, MappingNode):
                flattener.flatten_mapping(node)
    except yaml.constructor.ConstructorError as exc:
        line, message = syntax_problem(exc, name)
        problems.add_text(name, line, message)
        return None
    return root


def _expanded_size(root: Node) -> int:
    """How many nodes walking the graph visits, counting shared nodes each time (capped)."""
    count = 0
    stack = [root]
    while stack and count <= MAX_EXPANDED_NODES:
        node = stack.pop()
        count += 1
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
    return count


def _distinct(root: Node) -> Iterator[Node]:
    """Every node of the graph once, shared (aliased) nodes included once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def _check_keys(node: Node, path: Path, problems: Problems, seen: set[int]) -> bool:
    """Refuse duplicate and non-scalar keys (merge keys are fine)."""
    if id(node) in seen:
        return True
    seen.add(id(node))
    sound = True
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            sound = _check_keys(item, (*path, index), problems, seen) and sound
    elif isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                continue
            if not isinstance(key, ScalarNode):
                problems.add(key, path, "mapping keys must be plain scalars")
                sound = False
                continue
            here = (*path, key.value)
            line = key.start_mark.line + 1
            if key.value in first:
                problems.add(
                    key, here, f"duplicate key {key.value!r} (first at line {first[key.value]})"
                )
                sound = False
            else:
                first[key.value] = line
            sound = _check_keys(value, here, problems, seen) and sound
    return sound


def interpolate(root: Node, apply: Callable[[str, Node, Path], str], problems: Problems) -> None:
    """Interpolate every scalar value (not keys) in place, each shared node once.

    ``apply(text, node, path)`` raises ``ValueError`` for a value it refuses,
    reported at the value's line.
    """
    done: set[int] = set()

    def walk(node: Node, path: Path) -> None:
        if id(node) in done:
            return
        done.add(id(node))
        if isinstance(node, ScalarNode):
            if isinstance(node.value, str) and "$" in node.value:
                try:
                    node.value = apply(node.value, node, path)
                except ValueError as exc:
                    problems.add(node, path, str(exc))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                walk(value, (*path, key.value))

    walk(root, ())


# ------------------------------------------------------------------ merging

# Under services.<name>: keys replaced whole by a later file, and keys merged as mappings.
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
_MAP_LIKE = {
    ("environment",),
    ("labels",),
    ("sysctls",),
    ("ulimits",),
    ("depends_on",),
    ("networks",),
    ("extra_hosts",),
    ("annotations",),
    ("deploy", "labels"),
    ("build", "args"),
}
# Lists merged by what each item is attached to.
_KEYED = {("ports",), ("volumes",), ("secrets",), ("configs",), ("devices",)}


def merge(base: MappingNode, override: MappingNode) -> MappingNode:
    """``override`` (a later file) merged over ``base``; neither is changed."""
    return _merge_mapping(base, override, ())


def _service_path(path: Path) -> Path | None:
    """The part of ``path`` below ``services.<name>``, or None outside a service."""
    if len(path) >= 2 and path[0] == "services":
        return path[2:]
    return None


def _merge(base: Node, override: Node, path: Path) -> Node:
    if override.tag == OVERRIDE_TAG:
        return retag(override)
    inside = _service_path(path)
    if inside in _REPLACED:
        return override
    if inside in _MAP_LIKE and (
        isinstance(base, SequenceNode | MappingNode)
        and isinstance(override, SequenceNode | MappingNode)
    ):
        return _merge_mapping(as_mapping(base, inside), as_mapping(override, inside), path)
    if isinstance(base, MappingNode) and isinstance(override, MappingNode):
        return _merge_mapping(base, override, path)
    if isinstance(base, SequenceNode) and isinstance(override, SequenceNode):
        if inside in _KEYED:
            return _merge_keyed(base, override)
        items = list(base.value)
        shown = {_canonical(item) for item in items}
        for item in override.value:
            if _canonical(item) not in shown:
                items.append(item)
        return SequenceNode(base.tag, items, base.start_mark, override.end_mark)
    return override


def _merge_mapping(base: MappingNode, override: MappingNode, path: Path) -> MappingNode:
    pairs: list[tuple[Node, Node]] = []
    index: dict[str, int] = {}
    for key, value in base.value:
        index[key.value] = len(pairs)
        pairs.append((key, value))
    for key, value in override.value:
        here = (*path, key.value)
        if value.tag == RESET_TAG:
            if key.value in index:
                pairs[index[key.value]] = (
                    key,
                    ScalarNode(RESET_TAG, "", key.start_mark, key.end_mark),
                )
            continue
        if key.value in index:
            _, old = pairs[index[key.value]]
            merged = value if old.tag == RESET_TAG else _merge(old, value, here)
            pairs[index[key.value]] = (key, merged)
        else:
            index[key.value] = len(pairs)
            pairs.append((key, value))
    pairs = [(k, v) for k, v in pairs if v.tag != RESET_TAG]
    return MappingNode(base.tag, pairs, base.start_mark, base.end_mark)


def _merge_keyed(base: SequenceNode, override: SequenceNode) -> SequenceNode:
    items = list(base.value)
    keys = [_attachment(item) for item in items]
    for item in override.value:
        key = _attachment(item)
        if key is not None and key in keys:
            items[keys.index(key)] = item
        elif _canonical(item) not in {_canonical(i) for i in items}:
            items.append(item)
            keys.append(key)
    return SequenceNode(base.tag, items, base.start_mark, override.end_mark)


def _attachment(item: Node) -> str | None:
    """What a port, volume, secret, config or device item is attached to."""
    if isinstance(item, ScalarNode):
        parts = str(item.value).split(":")
        return parts[-2] if len(parts) > 2 and parts[-1] in ("ro", "rw") else parts[-1]
    if isinstance(item, MappingNode):
        for name in ("target", "container_path"):
            for key, value in item.value:
                if key.value == name and isinstance(value, ScalarNode):
                    return str(value.value)
        for key, value in item.value:
            if key.value == "source" and isinstance(value, ScalarNode):
                return str(value.value)
    return None


def _canonical(node: Node) -> Any:
    if isinstance(node, ScalarNode):
        return ("s", node.value)
    if isinstance(node, SequenceNode):
        return ("l", tuple(_canonical(i) for i in node.value))
    if isinstance(node, MappingNode):
        return ("m", tuple(sorted((k.value, _canonical(v)) for k, v in node.value)))
    return ("?", id(node))


def as_mapping(node: Node, inside: Path | None) -> MappingNode:
    """A list form (``["K=V", "name"]``) as the mapping it stands for, marks kept."""
    if isinstance(node, MappingNode):
        return node
    assert isinstance(node, SequenceNode)
    pairs: list[tuple[Node, Node]] = []
    by_name = inside in {("depends_on",), ("networks",)}
    separator = ":" if inside == ("extra_hosts",) else "="
    for item in node.value:
        text = str(item.value) if isinstance(item, ScalarNode) else ""
        if by_name or separator not in text:
            name, value = text, None
        else:
            name, _, value = text.partition(separator)
        key = ScalarNode(_STR_TAG, name, item.start_mark, item.end_mark)
        if value is None:
            pairs.append((key, ScalarNode(_NULL_TAG, "", item.start_mark, item.end_mark)))
        else:
            pairs.append((key, ScalarNode(_STR_TAG, value, item.start_mark, item.end_mark)))
    return MappingNode(_MAP_TAG, pairs, node.start_mark, node.end_mark)


def retag(node: Node) -> Node:
    """A node tagged ``!override`` (or ``!reset`` left alone) given its plain tag back."""
    if isinstance(node, MappingNode):
        return MappingNode(_MAP_TAG, node.value, node.start_mark, node.end_mark)
    if isinstance(node, SequenceNode):
        return SequenceNode(_SEQ_TAG, node.value, node.start_mark, node.end_mark)
    assert isinstance(node, ScalarNode)
    tag: str = yaml.SafeLoader("").resolve(  # type: ignore[no-untyped-call]
        ScalarNode, node.value, (True, False)
    )
    return ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)


def strip_tags(root: MappingNode) -> None:
    """Drop ``!reset`` entries and retag ``!override`` ones left after merging, in place."""
    for node in list(_distinct(root)):
        if isinstance(node, MappingNode):
            node.value = [
                (k, retag(v) if v.tag == OVERRIDE_TAG else v)
                for k, v in node.value
                if v.tag != RESET_TAG
            ]
        elif isinstance(node, SequenceNode):
            node.value = [
                retag(v) if v.tag == OVERRIDE_TAG else v for v in node.value if v.tag != RESET_TAG
            ]


def construct(node: Node) -> Any:
    """The plain data of a (checked, flattened) node graph."""
    constructor = yaml.SafeLoader("")
    return constructor.construct_object(node, deep=True)
