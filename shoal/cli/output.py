"""Rendering objects for people and for scripts: tables, ages, YAML and JSON.

Everything here works on wire-form dicts (camelCase, as the Control service
sends them) rather than on the models, so ``-o json`` and the tables show the
same data, and a field a newer manager adds does not break an older client.
Missing fields render as ``-`` instead of raising.

Tables follow kubectl: upper-case headers, left-aligned columns two spaces
apart, ages as one unit (``5s``, ``3m``, ``2h``, ``4d``). ``wide`` adds columns,
it never changes the ones ``table`` shows, so scripts that cut columns keep
working with either.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

TYPE_CHECKING = False  # not from typing: see shoal.cli.main
if TYPE_CHECKING:
    from typing import Any, TextIO

Row = Sequence[str]
COMMAND_WIDTH = 40
MESSAGE_WIDTH = 60


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_age(seconds: float | None) -> str:
    """One unit, rounded down: ``59s``, ``3m``, ``23h``, ``4d``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))  # clocks of two machines may disagree a little
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def age_since(value: Any, now: datetime | None = None) -> str:
    when = parse_time(value)
    if when is None:
        return "-"
    return format_age(((now or datetime.now(UTC)) - when).total_seconds())


def truncate(text: str, width: int) -> str:
    text = " ".join(text.split())  # a table cell is one line
    return text if len(text) <= width else text[: width - 3] + "..."


def render_table(headers: Row, rows: Iterable[Row]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    return Columns(headers).render(rows)


class Columns:
    """A table rendered in parts (a list that arrives page by page): the header with the
    first part; each part's columns padded to the widest cell seen so far, so a table
    rendered in one part is ``render_table``'s."""

    def __init__(self, headers: Row) -> None:
        self.headers = list(headers)
        self.widths = [len(h) for h in headers]
        self.started = False

    def render(self, rows: Iterable[Row]) -> str:
        part = [list(r) for r in rows]
        if not self.started:
            part.insert(0, self.headers)
            self.started = True
        for row in part:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, row, strict=False)]
        lines = []
        for row in part:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], self.widths, strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    import yaml  # only -o yaml needs it

    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.rstrip("\n")


def command_line(template: dict[str, Any]) -> str:
    return shlex.join([*template.get("command", []), *template.get("args", [])])


# ------------------------------------------------------------------ services


def service_replicas(view: dict[str, Any]) -> str:
    status = view.get("status") or {}
    return f"{status.get('runningTasks', 0)}/{status.get('desiredTasks', 0)}"


def services_table(items: list[dict[str, Any]], wide: bool = False) -> str:
    headers = ["NAME", "MODE", "REPLICAS", "RUNTIME", "COMMAND", "AGE"]
    if wide:
        headers += ["GENERATION", "CONSTRAINTS", "ERROR"]
    rows = []
    for view in items:
        spec = view.get("spec", {})
        template = spec.get("template", {})
        command = command_line(template)
        row = [
            view.get("metadata", {}).get("name", "-"),
            spec.get("mode", "replicated"),
            service_replicas(view),
            template.get("runtime", "process"),
            command if wide else truncate(command, COMMAND_WIDTH),
            age_since(view.get("metadata", {}).get("createdAt")),
        ]
        if wide:
            row += [
                str(view.get("metadata", {}).get("generation", "-")),
                ", ".join(spec.get("placement", {}).get("constraints", [])) or "-",
                (view.get("status") or {}).get("error", "") or "-",
            ]
        rows.append(row)
    return render_table(headers, rows)


# --------------------------------------------------------------------- tasks

# The states a task never leaves (``shoal.models.TaskState.terminal``), spelled out so
# that reading a task's state loads no models.
TERMINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned"})


def is_terminal(task: dict[str, Any]) -> bool:
    """Whether the task has ended; a state this client does not know is still going."""
    return (task.get("status") or {}).get("state", "new") in TERMINAL_STATES


def task_message(task: dict[str, Any]) -> str:
    status = task.get("status", {})
    return str(status.get("error") or status.get("message") or "")


def task_state(task: dict[str, Any]) -> str:
    """``running``, or ``running (healthy)`` for a task with a healthcheck."""
    status = task.get("status", {})
    state = str(status.get("state", "-")).lower()
    health = status.get("health")
    return f"{state} ({health})" if health else state


def task_slot(task: dict[str, Any]) -> str:
    slot = task.get("slot", 0)
    return "-" if slot == 0 else str(slot)  # global services have no slot numbers


def slot_label(key: str) -> str:
    """A slot key of the orchestrator (``"2"`` or ``"node:n1"``) as people say it."""
    if key.startswith("node:"):
        return f"node {key[5:]}"
    return f"slot {key}" if key.isdigit() else key


def format_units(resources: dict[str, list[str]]) -> str:
    """Generic resource units, ``{gpu: [0, 1]}`` → ``gpu=0,1``; none: ``-``."""
    shown = " ".join(f"{kind}={','.join(units)}" for kind, units in sorted(resources.items()))
    return shown or "-"


def format_ports(ports: list[dict[str, Any]]) -> str:
    """A task's ports as the node has them: ``http=20417/tcp``, ``web=8080->80/tcp``."""
    shown = []
    for port in ports:
        target = f"->{port['target']}" if port.get("target") else ""
        shown.append(
            f"{port.get('name', '?')}={port.get('port', '?')}{target}/{port.get('protocol', 'tcp')}"
        )
    return ",".join(shown) or "-"


def template_ports(ports: list[dict[str, Any]]) -> str:
    """A template's ports: ``http=auto/tcp``, ``80=8080->80/tcp``."""
    shown = []
    for port in ports:
        published = port.get("published") or "auto"
        target = f"->{port['target']}" if port.get("target") else ""
        name = port.get("name") or port.get("target")
        shown.append(f"{name}={published}{target}/{port.get('protocol', 'tcp')}")
    return ", ".join(shown) or "<none>"


def tasks_table(items: list[dict[str, Any]], wide: bool = False) -> str:
    return render_table(*task_rows(items, wide))


def task_rows(items: list[dict[str, Any]], wide: bool = False) -> tuple[Row, list[Row]]:
    """The tasks table's headers and rows."""
    headers: Row = ["NAME", "SERVICE", "SLOT", "NODE", "DESIRED", "STATE", "AGE", "MESSAGE"]
    if wide:
        headers = [
            "NAME",
            "ID",
            "SERVICE",
            "SLOT",
            "NODE",
            "DESIRED",
            "STATE",
            "AGE",
            "EXIT",
            "PID",
            "RESOURCES",
            "PORTS",
            "MESSAGE",
        ]
    rows: list[Row] = []
    for task in items:
        status = task.get("status", {})
        message = task_message(task)
        exit_code = status.get("exitCode")
        pid = status.get("pid")
        row = [
            task.get("name") or task.get("id", "-"),
            task.get("service", "-"),
            task_slot(task),
            task.get("nodeId") or "-",
            task.get("desiredState", "-"),
            task_state(task),
            age_since(status.get("timestamp") or task.get("createdAt")),
            message if wide else truncate(message, MESSAGE_WIDTH),
        ]
        if wide:
            row[1:1] = [task.get("id", "-")]
            row[8:8] = [
                "-" if exit_code is None else str(exit_code),
                "-" if pid is None else str(pid),
                format_units(task.get("resources") or {}),
                format_ports(status.get("ports") or []),
            ]
        rows.append(row)
    return headers, rows


# --------------------------------------------------------------------- nodes


def node_runtimes(node: dict[str, Any], with_unavailable: bool = False) -> str:
    runtimes = node.get("description", {}).get("runtimes", [])
    names = [
        r.get("name", "?") if r.get("available") else f"{r.get('name', '?')}(unavailable)"
        for r in runtimes
        if r.get("available") or with_unavailable
    ]
    return ",".join(names) or "-"


def node_labels(node: dict[str, Any]) -> dict[str, str]:
    """Labels the agent announced, overridden by labels an operator set."""
    return {
        **node.get("description", {}).get("labels", {}),
        **node.get("spec", {}).get("labels", {}),
    }


def nodes_table(
    items: list[dict[str, Any]], task_counts: dict[str, int] | None = None, wide: bool = False
) -> str:
    headers = ["NAME", "STATE", "AVAILABILITY", "RUNTIMES", "TASKS", "AGE"]
    if wide:
        headers += [
            "HOSTNAME",
            "ADDRESS",
            "CPUS",
            "MEMORY",
            "RESOURCES",
            "VERSION",
            "LABELS",
            "MESSAGE",
        ]
    rows = []
    for node in items:
        description = node.get("description", {})
        status = node.get("status", {})
        name = node.get("id", "-")
        row = [
            name,
            status.get("state", "-"),
            node.get("spec", {}).get("availability", "active"),
            node_runtimes(node, with_unavailable=wide),
            "-" if task_counts is None else str(task_counts.get(name, 0)),
            age_since(status.get("updatedAt")),
        ]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in sorted(node_labels(node).items()))
            row += [
                description.get("hostname", "-"),
                status.get("advertiseAddress") or status.get("address") or "-",
                f"{description.get('cpus', 0):g}",
                format_bytes(int(description.get("memory", 0))),
                format_units(description.get("genericResources") or {}),
                description.get("agentVersion") or "-",
                labels or "-",
                status.get("message") or "-",
            ]
        rows.append(row)
    return render_table(headers, rows)


def format_bytes(size: int) -> str:
    """Binary units with one decimal, for people (``15.6Gi``); ``-`` for zero."""
    if size <= 0:
        return "-"
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi"):
        if value < 1024:
            return f"{value:.1f}{unit}" if unit else f"{int(value)}"
        value /= 1024
    return f"{value:.1f}Ti"


# ------------------------------------------------------------------ listings


class Listing:
    """A list printed as its pages arrive, the same text as printing it whole: a table
    (``Columns``), or with ``-o json|yaml`` one document ``{"items": [...]}``, which is
    only complete (and valid) once ``close`` ran. ``rows`` makes a page's table."""

    def __init__(
        self,
        fmt: str,
        rows: Callable[[list[dict[str, Any]]], tuple[Row, list[Row]]],
        out: TextIO | None = None,
    ) -> None:
        self.fmt = fmt
        self.count = 0
        self._rows = rows
        self._out = out or sys.stdout
        self._columns: Columns | None = None

    def add(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        first = self.count == 0
        self.count += len(items)
        if self.fmt == "json":
            # As json.dumps(..., indent=2) nests each item two levels deep.
            text = ",\n".join(
                "    " + json.dumps(i, indent=2).replace("\n", "\n    ") for i in items
            )
            self._write(('{\n  "items": [\n' if first else ",\n") + text)
        elif self.fmt == "yaml":
            self._write(("items:\n" if first else "\n") + dump(items, "yaml"))
        else:
            headers, rows = self._rows(items)
            if self._columns is None:
                self._columns = Columns(headers)
            self._write(("" if first else "\n") + self._columns.render(rows))

    def close(self) -> None:
        """The end of the document (json, yaml; a table needs none)."""
        if self.fmt == "json":
            self._write("\n  ]\n}\n" if self.count else '{\n  "items": []\n}\n')
        elif self.fmt == "yaml":
            self._write("\n" if self.count else "items: []\n")
        elif self.count:
            self._write("\n")

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


# ------------------------------------------------------------------ progress


class Progress:
    """Where a waiting command says how far it got, on stderr.

    On a terminal: one status line, rewritten in place (with ``elapsed``).
    Otherwise (a pipe, a CI log): one line per change of ``text``, so a log
    reads as what happened and when it changed, not a line per poll.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._shown = False
        self._last = ""

    def update(self, text: str, elapsed: str = "") -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + (f"{text} {elapsed}" if elapsed else text))
            self.stream.flush()
            self._shown = True
        elif text != self._last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last = text

    def clear(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
