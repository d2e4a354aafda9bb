"""The agent's port allocator, with real sockets on loopback, and a process that gets its ports.

The allocator must never hand out a port something listens on, nor one another
task of the agent holds; it keeps what it gave across an agent restart and
frees it when the task ends.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.agent.ports import PortAllocator, parse_range, port_free
from shoal.agent.taskrunner import TaskRunner
from shoal.errors import TaskRejectedError
from shoal.models import Task, TaskState, TaskStatus, TaskTemplate
from shoal.models.container import PortMapping
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.process import ProcessRuntime
from tests.agent.test_taskrunner import Reports
from tests.reconciler.world import service

HTTP = [PortMapping(name="http")]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on (on loopback only)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_something_listens_on_is_never_given(tmp_path: Path, listener: int) -> None:
    assert not port_free(listener, "tcp")
    allocator = PortAllocator(tmp_path, (listener, listener))
    with pytest.raises(TaskRejectedError, match=f"range {listener}-{listener}"):
        allocator.allocate("t1", HTTP)
    # Around it, every port given is free and none is the taken one.
    low = max(1024, listener - 20)
    allocator = PortAllocator(tmp_path, (low, low + 40))
    for index in range(10):
        (port,) = allocator.allocate(f"t{index}", HTTP)
        assert low <= port.port <= low + 40 and port.port != listener
        assert port_free(port.port, "tcp")


def test_ports_held_by_other_tasks_are_not_given_again_until_freed(tmp_path: Path) -> None:
    low = next(p for p in range(40000, 60000, 3) if all(port_free(p + i, "tcp") for i in range(3)))
    allocator = PortAllocator(tmp_path, (low, low + 2))
    given = {allocator.allocate(f"t{i}", HTTP)[0].port for i in range(3)}
    assert given == {low, low + 1, low + 2}
    with pytest.raises(TaskRejectedError):
        allocator.allocate("t3", HTTP)
    assert allocator.allocate("t1", HTTP) == allocator.held("t1")  # asked again: the same
    freed = allocator.held("t1")
    assert freed is not None
    allocator.release("t1")
    assert allocator.allocate("t3", HTTP)[0].port == freed[0].port


def test_a_fixed_port_another_task_was_given_from_the_range_is_refused(tmp_path: Path) -> None:
    low = next(p for p in range(40000, 60000, 3) if port_free(p, "tcp"))
    allocator = PortAllocator(tmp_path, (low, low))
    (dynamic,) = allocator.allocate("a", HTTP)
    assert dynamic.port == low
    # The scheduler reserves fixed ports among fixed ports only: it may place this here.
    with pytest.raises(TaskRejectedError, match=f"host port {low}/tcp is held"):
        allocator.allocate("b", [PortMapping(name="http", published=low)])
    assert allocator.held("b") is None and allocator.held("a") == (dynamic,)
    allocator.release("a")
    (fixed,) = allocator.allocate("b", [PortMapping(name="http", published=low)])
    assert fixed.port == low


def test_fixed_ports_are_taken_as_asked_and_names_kept(tmp_path: Path) -> None:
    allocator = PortAllocator(tmp_path, (20000, 32767))
    ports = allocator.allocate(
        "t1", [PortMapping(name="http"), PortMapping(published=9100, target=9100, protocol="udp")]
    )
    assert [(p.name, p.protocol) for p in ports] == [("http", "tcp"), ("9100", "udp")]
    assert ports[1].port == 9100 and 20000 <= ports[0].port <= 32767


def test_ports_survive_an_agent_restart_and_leftovers_are_freed(tmp_path: Path) -> None:
    first = PortAllocator(tmp_path / "ports")
    kept = first.allocate("adopted", HTTP)
    first.allocate("ended-while-away", HTTP)
    again = PortAllocator(tmp_path / "ports")
    assert set(again.load()) == {"adopted", "ended-while-away"}
    again.forget_except({"adopted"})
    assert again.held("adopted") == kept
    assert again.held("ended-while-away") is None
    assert sorted(p.name for p in (tmp_path / "ports").iterdir()) == ["adopted.json"]
    # A third life sees only what is still held.
    assert set(PortAllocator(tmp_path / "ports").load()) == {"adopted"}


def test_port_ranges_parse_with_clear_errors() -> None:
    assert parse_range("20000-32767") == (20000, 32767)
    assert parse_range("8080") == (8080, 8080)
    for bad in ("a-b", "30000-20000", "0-10", "1-70000"):
        with pytest.raises(ValueError, match="invalid port range"):
            parse_range(bad)


def assigned(task_id: str, template: TaskTemplate) -> Task:
    """A task of ``template`` the scheduler just gave to node n1."""
    return Task(
        id=task_id,
        service="web",
        slot=1,
        node_id="n1",
        template=template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )


async def test_a_process_gets_its_ports_in_its_environment_and_status(tmp_path: Path) -> None:
    runtime = ProcessRuntime(RuntimeSettings(state_dir=tmp_path / "runtime", node_name="n1"))
    allocator = PortAllocator(tmp_path / "ports")
    command = 'echo "$PORT $SHOAL_PORT_HTTP $SHOAL_PORT_ADMIN_API $SHOAL_NODE_ADDRESS"; sleep 60'
    template = service(
        runtime="process",
        command=["sh", "-c", command],
        ports=[{"name": "http"}, {"name": "admin-api", "published": 0}],
    ).spec.template
    task = assigned("t1", template)
    reports = Reports()
    statuses: list[TaskStatus] = []

    def report(task_id: str, status: TaskStatus) -> None:
        statuses.append(status)
        reports(task_id, status)

    runner = TaskRunner(task, runtime, report, "n1", None, ports=allocator, address="127.0.0.2")
    await reports.until(TaskState.RUNNING)
    running = statuses[-1]
    assert [p.name for p in running.ports] == ["http", "admin-api"]
    http, admin = (p.port for p in running.ports)
    assert http != admin
    assert allocator.held("t1") == tuple(running.ports)
    assert runner.handle is not None
    lines: list[str] = []
    for _ in range(100):  # the shell's first line, once written
        lines = [line async for line in runtime.logs(runner.handle)]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert lines == [f"{http} {http} {admin} 127.0.0.2"]
    await runner.remove()
    assert allocator.held("t1") is None  # it ended: its ports are free again
    await runtime.aclose()


async def test_a_health_probe_finds_a_port_by_its_name(tmp_path: Path) -> None:
    runtime = ProcessRuntime(RuntimeSettings(state_dir=tmp_path / "runtime", node_name="n1"))
    template = service(
        runtime="process",
        command=["sh", "-c", 'exec python3 -m http.server "$SHOAL_PORT_WEB" --bind 127.0.0.1'],
        ports=[{"name": "web"}],
        healthcheck={"http": {"port": "web"}, "interval": "200ms", "startPeriod": "10s"},
    ).spec.template
    task = assigned("t2", template)
    reports = Reports()
    runner = TaskRunner(task, runtime, reports, "n1", None, ports=PortAllocator(tmp_path / "p"))
    await reports.until(TaskState.RUNNING)
    assert reports.last is not None and reports.last.health == "healthy"
    (port,) = reports.last.ports
    assert reports.last.message == f"healthy: HTTP 200 from http://127.0.0.1:{port.port}/"
    await runner.remove()
    await runtime.aclose()
