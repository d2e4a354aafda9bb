"""Loading spec documents from YAML, with every problem pinned to a file and line.

Users apply whole directories of YAML; one wrong indent or typo should produce
one precise message (``web.yaml:14: spec.template.stopGracePeriod: invalid
duration '5x'``), not a pydantic traceback, and an apply must be all or
nothing. So every file is first *composed* into PyYAML's node tree, which keeps
the start line of every key and value, and only then constructed into plain
data and validated by the models. A pydantic error's ``loc`` is walked back down
the node tree to find the line and the key as the user spelled it. Problems from
all documents of all files are collected and raised as one ``SpecError``.

The YAML side (files, composing, the checks below, locating a field) is
``shoal.specfiles``, which imports no models: the CLI's ``apply`` composes with
it and lets the manager validate. A few things PyYAML accepts are refused before
validation, because they are either mistakes or hazards in a spec: duplicate
keys in one mapping (PyYAML silently keeps the last one), merge keys (``<<``),
documents over 1 MiB, and aliases (``*name``). Aliases are refused outright
rather than limited: a spec has no need for them, and a few lines of nested
aliases ("billion laughs") expand into an exponentially large structure once
something walks it. The composer never resolves an alias to its anchored
node, so the tree stays a small tree whatever the input.

``MODELS`` maps a kind (``Service``, ``Sync``, and ``Config`` for configs
written as documents) to its model; a new kind is one more entry there (and
in ``specfiles.KINDS``).
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
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from shoal.models.secret import ConfigDocument
from shoal.models.service import Service
from shoal.models.sync import Sync
from shoal.specfiles import MAX_DOCUMENT_BYTES as MAX_DOCUMENT_BYTES
from shoal.specfiles import YAML_SUFFIXES as YAML_SUFFIXES
from shoal.specfiles import Checks, Located, SpecFile, locate_node, read_paths, read_text
from shoal.specfiles import child as child
from shoal.specfiles import format_path as format_path
from shoal.specfiles import syntax_problem as syntax_problem
from shoal.specfiles import unmarked_problem as unmarked_problem
from shoal.specfiles import yaml_files as yaml_files

# A document of a spec file, and kind -> the model that validates it (all share API_VERSION).
Document = Service | ConfigDocument | Sync
DocumentModel = type[Service] | type[ConfigDocument] | type[Sync]
# The documents Apply takes as ``documents``; configs go apart, as ``configs``.
APPLIED: dict[str, type[Service] | type[Sync]] = {"Service": Service, "Sync": Sync}
# Every kind (``specfiles.KIND_NAMES``, which the CLI checks without loading these).
MODELS: dict[str, DocumentModel] = {**APPLIED, "Config": ConfigDocument}

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "YAML_SUFFIXES",
    "Document",
    "child",
    "dump_services",
    "error_message",
    "format_path",
    "load_paths",
    "load_text",
    "locate_node",
    "located_errors",
    "syntax_problem",
    "unmarked_problem",
    "validation_problems",
    "yaml_files",
]


def load_paths(
    paths: list[Path], relative_to: Path | None = None, allow_empty_dir: bool = False
) -> list[Document]:
    """Load every document of every file; directories are searched recursively for YAML.

    Raises ``SpecError`` listing every problem found; nothing is returned unless
    all documents are valid. With ``relative_to``, files are named relative to
    it in messages (a git checkout names ``services/web.yaml``, not its cache
    path). A directory without YAML files is a problem unless ``allow_empty_dir``.
    """
    load = Checks(_describe)
    files = read_paths(paths, load.problems, relative_to, allow_empty_dir)
    documents = [d for spec in files for d in load.file(spec, validated(spec))]
    load.raise_problems()
    return load.in_dependency_order(documents)


def load_text(text: str, filename: str) -> list[Document]:
    """Load the documents of one file's text; ``filename`` is used in messages."""
    load = Checks(_describe)
    spec = read_text(text, filename)
    documents = load.file(spec, validated(spec))
    load.raise_problems()
    return load.in_dependency_order(documents)


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


def validated(spec: SpecFile) -> list[tuple[Located, Document]]:
    """The documents of ``spec`` its kind's model accepts; the others' problems go to
    ``spec.found``, at their lines."""
    valid = []
    for located in spec.documents:
        model = MODELS[located.kind]
        try:
            valid.append((located, model.model_validate(located.data)))
        except ValidationError as exc:
            spec.found += [located.problem(e["loc"], _message(e, model)) for e in exc.errors()]
    return valid


def _describe(document: Document) -> tuple[str, str | None, list[Any]]:
    """A model's kind, name and the services it depends on (``specfiles.Checks``)."""
    if isinstance(document, Service):
        return document.kind, document.name, [d.service for d in document.spec.depends_on]
    return document.kind, document.name, []


def located_errors(exc: ValidationError, model: type[BaseModel]) -> list[dict[str, Any]]:
    """``{"loc": [...], "message": ...}`` for each error: what a client that kept the
    YAML (``specfiles.Located.problem``) turns into ``file:line: field: message``."""
    return [{"loc": list(e["loc"]), "message": _message(e, model)} for e in exc.errors()]


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """``field.path: message`` for each error, worded as the loader words them.

    For specs that arrive without their YAML (the manager validating an apply):
    the same messages, without a file and line.
    """
    problems = []
    for error in exc.errors():
        path = format_path(list(error["loc"]))
        message = _message(error, model)
        problems.append(f"{path}: {message}" if path else message)
    return problems


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
error_message = _message
