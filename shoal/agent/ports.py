"""The ports an agent gives its tasks: fixed ones as asked, the others picked from a range.

A template port with ``published: 0`` (or none) gets a port of the agent's
``--port-range`` when its task starts: one that no other task of this agent holds
and that nothing on the node listens on right now (the agent tries to bind it,
then lets go at once so the task can). Fixed ports are taken as they are: the
scheduler already made sure no other task on the node publishes them.

What a task got is recorded in ``STATE_DIR/ports/<task id>.json`` (written
atomically) before the task starts, so an agent that restarts and adopts the
task keeps its ports and does not give them to another. The record goes when
the task ends here; records of tasks that ended while the agent was away go at
the next start (``forget_except``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
from collections.abc import Iterable
from pathlib import Path

import structlog

from shoal.errors import TaskRejectedError
from shoal.models.container import PortMapping
from shoal.models.task import TaskPort

log = structlog.get_logger(__name__)

DEFAULT_RANGE = (20000, 32767)


def parse_range(text: str) -> tuple[int, int]:
    """``"20000-32767"`` → ``(20000, 32767)``; ValueError naming what is wrong."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"invalid port range {text!r}: use LOW-HIGH, e.g. 20000-32767") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"invalid port range {text!r}: ports 1-65535, LOW <= HIGH")
    return first, last


def port_free(port: int, protocol: str) -> bool:
    """Whether nothing on this node is bound to ``port`` (any address) right now."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, kind)
        except OSError:  # no IPv6 here
            continue
        with probe:
            if kind == socket.SOCK_STREAM:
                # A port in TIME_WAIT is free for a listener that sets SO_REUSEADDR,
                # as servers do; a listening socket still makes the bind fail.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


class PortAllocator:
    """The ports of this agent's tasks; see the module docstring."""

    def __init__(
        self,
        record_dir: Path,
        port_range: tuple[int, int] = DEFAULT_RANGE,
        rng: random.Random | None = None,
    ) -> None:
        self.record_dir = record_dir
        self.low, self.high = port_range
        self._rng = rng or random.Random()
        self._held: dict[str, tuple[TaskPort, ...]] = {}

    def load(self) -> dict[str, tuple[TaskPort, ...]]:
        """Read the records an earlier life of this agent left; returns them by task id."""
        self._held = {}
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.record_dir.glob("*.json")):
                try:
                    raw = json.loads(path.read_text())
                    ports = tuple(TaskPort.from_wire(p) for p in raw["ports"])
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.warning("ports.bad_record", path=str(path), error=str(exc))
                    path.unlink(missing_ok=True)
                    continue
                self._held[path.stem] = ports
        return dict(self._held)

    def forget_except(self, task_ids: Iterable[str]) -> None:
        """Release every record but those of ``task_ids`` (the tasks adopted at start)."""
        keep = set(task_ids)
        for task_id in [t for t in self._held if t not in keep]:
            self.release(task_id)

    def held(self, task_id: str) -> tuple[TaskPort, ...] | None:
        return self._held.get(task_id)

    def in_use(self) -> set[tuple[int, str]]:
        return {(p.port, p.protocol) for ports in self._held.values() for p in ports}

    def allocate(
        self, task_id: str, wanted: Iterable[PortMapping], *, targets: bool = False
    ) -> tuple[TaskPort, ...]:
        """The task's ports, recorded; the same ones again for a task that already has some.

        ``targets``: keep each port's ``target`` (containers); a process has none.
        Raises ``TaskRejectedError`` when the range has no free port left, or a fixed port
        is one this agent gave another task.
        """
        if task_id in self._held:
            return self._held[task_id]
        taken = self.in_use()
        ports: list[TaskPort] = []
        for mapping in wanted:
            number = mapping.published or self._pick(mapping.protocol, taken)
            if mapping.published and (number, mapping.protocol) in taken:
                # The scheduler reserves fixed ports among fixed ports only: one this agent
                # picked for another task's ``published: 0`` is news to it.
                raise TaskRejectedError(
                    f"host port {number}/{mapping.protocol} is held by another task on this "
                    f"node (picked from the agent's range {self.low}-{self.high}); publish "
                    "fixed ports outside the range"
                )
            taken.add((number, mapping.protocol))
            ports.append(
                TaskPort(
                    name=mapping.key,
                    port=number,
                    protocol=mapping.protocol,
                    target=mapping.target if targets else None,
                )
            )
        result = tuple(ports)
        if result:
            self._record(task_id, result)
        self._held[task_id] = result
        return result

    def release(self, task_id: str) -> None:
        """The task ended here: its ports are free for others."""
        if self._held.pop(task_id, None) is not None:
            (self.record_dir / f"{task_id}.json").unlink(missing_ok=True)

    def _pick(self, protocol: str, taken: set[tuple[int, str]]) -> int:
        size = self.high - self.low + 1
        start = self._rng.randrange(size)  # spread: two agents on one host rarely collide
        for offset in range(size):
            port = self.low + (start + offset) % size
            if (port, protocol) not in taken and port_free(port, protocol):
                return port
        raise TaskRejectedError(
            f"no free {protocol} port left in this agent's range {self.low}-{self.high}"
        )

    def _record(self, task_id: str, ports: tuple[TaskPort, ...]) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        path = self.record_dir / f"{task_id}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"ports": [p.to_wire() for p in ports]}))
        os.replace(scratch, path)
