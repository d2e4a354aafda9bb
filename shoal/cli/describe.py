"""``shoal describe``: one object, its tasks, and why it is in the state it is in.

``get`` answers "what is there"; ``describe`` answers "why": the notes the
orchestrator left for slots it is not restarting (restart policy exhausted,
back-off pending), the orchestrator's last error, every task with its exit
code and message, and the recent events. The layout is kubectl's: ``Key:
value`` lines, then indented sections, so it reads well in a terminal and is
easy to grep. The input is the wire payload of the Describe RPC.
"""

from __future__ import annotations

import shlex
from datetime import UTC
from typing import Any

from shoal.cli.output import (
    age_since,
    command_line,
    format_bytes,
    format_ports,
    format_units,
    node_labels,
    parse_time,
    render_table,
    slot_label,
    task_message,
    task_slot,
    task_state,
    template_ports,
)

INDENT = "  "


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(key) for key, _ in pairs) + 2
    return [f"{(key + ':').ljust(width)}{value}" for key, value in pairs]


def _mapping(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "<none>"


def _when(value: Any) -> str:
    when = parse_time(value)
    if when is None:
        return "-"
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({age_since(value)} ago)"


def _section(title: str, body: list[str], empty: str = "<none>") -> list[str]:
    lines = ["", f"{title}:"]
    lines += [INDENT + line for line in body] if body else [INDENT + empty]
    return lines


def _healthcheck(check: dict[str, Any]) -> str:
    if "exec" in check:
        probe = "exec " + shlex.join(check["exec"])
    elif "http" in check:
        probe = f"http :{check['http']['port']}{check['http'].get('path', '/')}"
    else:
        probe = f"tcp :{check.get('tcp', {}).get('port', '?')}"
    return (
        f"{probe} every {check.get('interval', '10s')}, timeout {check.get('timeout', '5s')}, "
        f"{check.get('retries', 3)} retries, start period {check.get('startPeriod', '0s')}"
    )


def _tasks(tasks: list[dict[str, Any]], by_node: bool) -> list[str]:
    if not tasks:
        return []
    headers = ["NAME", "SLOT", "NODE", "DESIRED", "STATE", "AGE", "EXIT", "MESSAGE"]
    if by_node:
        headers[1] = "SERVICE"
    # Generic resource units given to the tasks, if any has some (e.g. "gpu=0,1").
    units = any(task.get("resources") for task in tasks)
    if units:
        headers.insert(3, "RESOURCES")
    # The ports the agents gave them (e.g. "http=20417/tcp"), if any has some.
    ports = any(task.get("status", {}).get("ports") for task in tasks)
    if ports:
        headers.insert(-1, "PORTS")
    rows = []
    for task in tasks:
        status = task.get("status", {})
        exit_code = status.get("exitCode")
        row = [
            task.get("name") or task.get("id", "-"),
            task.get("service", "-") if by_node else task_slot(task),
            task.get("nodeId") or "-",
            task.get("desiredState", "-"),
            task_state(task),
            age_since(status.get("timestamp") or task.get("createdAt")),
            "-" if exit_code is None else str(exit_code),
            task_message(task) or "-",
        ]
        if units:
            row.insert(3, format_units(task.get("resources") or {}))
        if ports:
            row.insert(-1, format_ports(status.get("ports") or []))
        rows.append(row)
    return render_table(headers, rows).splitlines()


def _dependencies(spec: dict[str, Any]) -> str:
    deps = spec.get("dependsOn", [])
    shown = ", ".join(f"{d.get('service')} ({d.get('condition', 'started')})" for d in deps)
    return shown or "<none>"


def _reservations(reservations: dict[str, Any]) -> str:
    text = f"cpus {reservations.get('cpus', 0)}, memory {reservations.get('memory', 0)}"
    for kind, count in sorted(reservations.get("generic", {}).items()):
        text += f", {kind} {count}"
    return text


def _events(events: list[dict[str, Any]]) -> list[str]:
    if not events:
        return []
    rows = [
        [
            age_since(e.get("time")),
            str(e.get("type", "Normal")),
            str(e.get("reason", "")),
            _about(e),
        ]
        for e in events
    ]
    return render_table(["AGE", "TYPE", "REASON", "MESSAGE"], rows).splitlines()


def _about(event: dict[str, Any]) -> str:
    """The message, naming the task when a task's event is shown under its service or node."""
    message = str(event.get("message", ""))
    obj = str(event.get("object", ""))
    return f"{obj.removeprefix('task/')}: {message}" if obj.startswith("task/") else message


def _notes(notes: dict[str, str]) -> list[str]:
    return [f"{slot_label(key)}: {reason}" for key, reason in sorted(notes.items())]


def _rollout(status: dict[str, Any]) -> list[tuple[str, str]]:
    update = status.get("update")
    if not update:
        return []
    pairs = [
        ("State", str(update.get("state", "-"))),
        ("Revision", f"{update.get('revision', '-')} (from {update.get('previousRevision', '-')})"),
        ("Updated", f"{update.get('updated', 0)}/{update.get('total', 0)} slot(s)"),
        ("Started", _when(update.get("startedAt"))),
    ]
    if update.get("completedAt"):
        pairs.append(("Completed", _when(update["completedAt"])))
    if update.get("message"):
        pairs.append(("Message", str(update["message"])))
    return pairs


def describe_service(payload: dict[str, Any]) -> str:
    view = payload.get("service", {})
    metadata = view.get("metadata", {})
    spec = view.get("spec", {})
    template = spec.get("template", {})
    status = view.get("status") or {}
    restart = spec.get("restartPolicy", {})
    reservations = template.get("resources", {}).get("reservations", {})
    placement = spec.get("placement", {})

    pairs = [
        ("Name", metadata.get("name", "-")),
        ("Labels", _mapping(metadata.get("labels", {}))),
        ("Generation", str(metadata.get("generation", "-"))),
        ("Created", _when(metadata.get("createdAt"))),
        ("Updated", _when(metadata.get("updatedAt"))),
        ("Mode", spec.get("mode", "replicated")),
        (
            "Replicas",
            f"{status.get('desiredTasks', 0)} desired, {status.get('runningTasks', 0)} running",
        ),
    ]
    if status.get("error"):
        pairs.append(("Error", str(status["error"])))
    lines = _fields(pairs)

    template_pairs = [
        ("Runtime", template.get("runtime", "process")),
        ("Command", command_line(template)),
        ("Workdir", template.get("workdir") or "<default>"),
        ("Env", _mapping(template.get("env", {}))),
        (
            "Stop",
            f"{template.get('stopSignal', 'SIGTERM')}, "
            f"then SIGKILL after {template.get('stopGracePeriod', '10s')}",
        ),
        ("Reservations", _reservations(reservations)),
    ]
    if template.get("image"):
        template_pairs.insert(1, ("Image", str(template["image"])))
    if template.get("ports"):
        template_pairs.append(("Ports", template_ports(template["ports"])))
    if template.get("healthcheck"):
        template_pairs.append(("Healthcheck", _healthcheck(template["healthcheck"])))
    lines += _section("Template", _fields(template_pairs))
    max_attempts = restart.get("maxAttempts", 0)
    policy_pairs = [
        ("Restart", restart.get("condition", "any")),
        ("Delay", str(restart.get("delay", "1s"))),
        ("Max attempts", str(max_attempts) if max_attempts else "unlimited"),
        ("Window", str(restart.get("window", "0s"))),
        ("Constraints", ", ".join(placement.get("constraints", [])) or "<none>"),
    ]
    if placement.get("preferences"):
        spreads = ", ".join(f"spread {p.get('spread')}" for p in placement["preferences"])
        policy_pairs.append(("Preferences", spreads))
    if placement.get("maxReplicasPerNode"):
        policy_pairs.append(("Max per node", str(placement["maxReplicasPerNode"])))
    if spec.get("dependsOn"):
        policy_pairs.append(("Depends on", _dependencies(spec)))
    lines += _section("Policy", _fields(policy_pairs))
    if str(spec.get("mode", "")).endswith("-job"):
        from shoal.cli.jobs import runs_table

        lines += _section("Runs", runs_table(view).splitlines())
    else:
        rollout = _rollout(status)
        lines += _section("Rollout", _fields(rollout) if rollout else [], empty="<no update yet>")
    task_lines = _tasks(payload.get("tasks", []), by_node=False)
    if payload.get("tasksOmitted"):
        task_lines.append(
            f"... and {payload['tasksOmitted']} more "
            f"(shoal get tasks --service {metadata.get('name', 'NAME')})"
        )
    lines += _section("Tasks", task_lines)
    lines += _section("Notes", _notes(payload.get("notes", {})))
    lines += _section("Events", _events(payload.get("events", [])))
    return "\n".join(lines)


def describe_node(payload: dict[str, Any]) -> str:
    node = payload.get("node", {})
    description = node.get("description", {})
    status = node.get("status", {})
    pairs = [
        ("Name", node.get("id", "-")),
        ("Hostname", description.get("hostname", "-")),
        ("Role", description.get("role", "worker")),
        ("State", status.get("state", "unknown")),
        ("Since", _when(status.get("updatedAt"))),
        ("Availability", node.get("spec", {}).get("availability", "active")),
        ("Address", status.get("advertiseAddress") or "-"),
        ("Session from", status.get("address") or "-"),
        ("Labels", _mapping(node_labels(node))),
        ("CPUs", f"{description.get('cpus', 0):g}"),
        ("Memory", format_bytes(int(description.get("memory", 0)))),
        ("Resources", format_units(description.get("genericResources") or {})),
        ("Agent version", description.get("agentVersion") or "-"),
    ]
    if status.get("message"):
        pairs.append(("Message", str(status["message"])))
    lines = _fields(pairs)
    runtimes = [
        f"{r.get('name', '?')}: "
        + ("available" if r.get("available") else "unavailable")
        + (f" ({r['message']})" if r.get("message") else "")
        for r in description.get("runtimes", [])
    ]
    lines += _section("Runtimes", runtimes)
    lines += _section("Tasks", _tasks(payload.get("tasks", []), by_node=True))
    lines += _section("Events", _events(payload.get("events", [])))
    return "\n".join(lines)
