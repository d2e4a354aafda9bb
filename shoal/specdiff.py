"""Comparing specs the way users read them: defaults filled in on both sides.

``shoal diff``, ``apply`` and the Sync controller's drift events all compare a
document from a file with the object in the store. Both sides are the same
pydantic model, so both come out of validation with every default filled in,
``command: "sleep 5"`` split into a list and ``10s`` turned into seconds; they
are then rendered through the same serializer. A spec that leaves a field at
its default therefore never differs from the stored object that has the
default written out ("out of sync" with no visible difference is the most
common complaint about Argo CD and Flux). Only what ``apply`` changes is
compared: ``metadata.name``, ``metadata.labels`` and ``spec``; ``status`` and
the fields the manager writes are left out.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from shoal.models.service import Service
from shoal.models.sync import Sync

Comparable = Service | Sync


def comparable(doc: Comparable) -> dict[str, Any]:
    """The part of a document that apply writes, in wire form with defaults filled in."""
    spec = doc.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(doc, Service) and doc.spec.mode == "replicated":
        # An omitted replica count means one replica: the same spec as `replicas: 1`.
        spec = {"mode": spec.pop("mode"), "replicas": doc.spec.replica_count, **spec}
    return {
        "apiVersion": doc.api_version,
        "kind": doc.kind,
        "metadata": {"name": doc.metadata.name, "labels": dict(doc.metadata.labels)},
        "spec": spec,
    }


def same(live: Comparable, wanted: Comparable) -> bool:
    return comparable(live) == comparable(wanted)


def render(doc: Comparable) -> str:
    return yaml.safe_dump(comparable(doc), sort_keys=False, default_flow_style=False, width=1000)


def unified(live: Comparable | None, wanted: Comparable | None) -> str:
    """A unified diff from the live object to the wanted one ('' when equal).

    ``live`` None is a creation (from ``/dev/null``), ``wanted`` None a deletion.
    """
    doc = wanted or live
    assert doc is not None
    label = f"{doc.kind.lower()}/{doc.metadata.name}"
    before = render(live).splitlines(keepends=True) if live is not None else []
    after = render(wanted).splitlines(keepends=True) if wanted is not None else []
    return "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"live/{label}" if live is not None else "/dev/null",
            tofile=f"wanted/{label}" if wanted is not None else "/dev/null",
        )
    )


def changed_fields(live: Comparable, wanted: Comparable, limit: int = 5) -> list[str]:
    """What differs, one ``path: old → new`` per field (lists compared whole)."""
    changes: list[str] = []
    _walk(comparable(live), comparable(wanted), "", changes)
    if len(changes) > limit:
        return [*changes[:limit], f"and {len(changes) - limit} more"]
    return changes


def _walk(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _walk(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out)
        return
    if old != new:
        out.append(f"{path}: {_short(old)} → {_short(new)}")


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."
