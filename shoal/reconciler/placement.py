"""Placement filters: can this node run this task at all?

Shared by the scheduler (choosing a node) and the orchestrator (noticing that a
running task's node no longer qualifies, and choosing the nodes of a global
service). ``port_conflict`` is the scheduler's host-port check: two tasks on one
node cannot publish the same host port and protocol. Each filter returns
``None`` when the node passes, or the reason it does not, so "no suitable
node" can say why.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.models import Node, TaskTemplate
from shoal.models.service import Placement, parse_constraint


def constraint_holds(node: Node, expr: str) -> bool:
    field, op, expected = parse_constraint(expr)
    actual: str | None
    if field.startswith("labels."):
        actual = node.labels.get(field[len("labels.") :])
    elif field == "hostname":
        actual = node.description.hostname
    elif field == "role":
        actual = node.description.role
    elif field == "id":
        actual = node.id
    else:  # pragma: no cover - the spec validator only admits the fields above
        raise ValueError(f"unknown constraint field {field!r}")
    return (actual == expected) if op == "==" else (actual != expected)


def static_mismatch(node: Node, template: TaskTemplate, placement: Placement) -> str | None:
    """Why ``node`` can never run the template as it is now (ignoring load)."""
    for expr in placement.constraints:
        if not constraint_holds(node, expr):
            return f"constraint {expr!r} not met"
    if not node.description.runtime_available(template.runtime):
        return f"runtime {template.runtime!r} not available"
    return None


def node_matches(node: Node, template: TaskTemplate, placement: Placement) -> bool:
    return static_mismatch(node, template, placement) is None


def host_ports(template: TaskTemplate) -> list[tuple[int, str]]:
    """The fixed host ports a task publishes: ``(port, protocol)``; the agent picks the
    others (``published: 0``) on the node, so they never conflict here."""
    return [(port.published, port.protocol) for port in template.ports if port.published]


def port_conflict(used: Mapping[tuple[int, str], int], template: TaskTemplate) -> str | None:
    """Why the task cannot go where ``used`` host ports are taken (count per port), if so."""
    for port, protocol in host_ports(template):
        if used.get((port, protocol), 0) > 0:
            return f"host port {port}/{protocol} already in use"
    return None
