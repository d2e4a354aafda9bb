"""Endpoints for processes without DNS: the variables, the file, and what a change does.

Real subprocesses through the ``process`` runtime; the catalog is fed by hand, as the
managers' session messages would feed it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shoal.agent.discovery import SETTLE, DnsSettings, NodeDiscovery
from shoal.agent.taskrunner import TaskRunner, launch_for
from shoal.discovery.catalog import Catalog, Endpoint, EndpointPort, message
from shoal.discovery.endpointsfile import View, write_atomically
from shoal.discovery.perspective import HOST, Perspective
from shoal.models import Task, TaskState, TaskStatus, TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskHandle
from shoal.runtimes.process import ProcessRuntime
from shoal.runtimes.sim import SimRuntime

NODE = "n1"


def web(slot: int, port: int, *, address: str = "127.0.0.2", node: str = NODE) -> Endpoint:
    return Endpoint(
        service="web",
        task_id=f"web-{slot}",
        slot=slot,
        node_id=node,
        address=address,
        ports=[
            EndpointPort(name="http", port=port),
            EndpointPort(name="admin-api", port=port + 1000),
        ],
    )


def test_variables_list_every_endpoint_at_its_first_and_each_named_port() -> None:
    catalog = Catalog()
    v6 = web(3, 20003, address="::1", node="n2")
    catalog.apply(message({"web": [web(2, 20002), web(1, 20001), v6], "db": []}, full=True))
    env = View(catalog, ["web", "db", "later"], NODE, HOST).environment()
    assert env == {
        "SHOAL_ENDPOINTS_WEB": "127.0.0.2:20001,127.0.0.2:20002,[::1]:20003",
        "SHOAL_ENDPOINTS_WEB_HTTP": "127.0.0.2:20001,127.0.0.2:20002,[::1]:20003",
        "SHOAL_ENDPOINTS_WEB_ADMIN_API": "127.0.0.2:21001,127.0.0.2:21002,[::1]:21003",
        "SHOAL_ENDPOINTS_DB": "",
        "SHOAL_ENDPOINTS_LATER": "",  # not created yet: no endpoints, not an error
    }


def test_a_container_sees_this_nodes_containers_at_their_own_address() -> None:
    catalog = Catalog()
    box = Endpoint(
        service="web",
        task_id="c1",
        slot=1,
        node_id=NODE,
        address="192.0.2.10",
        ports=[EndpointPort(name="http", port=20001, target=8080)],
        container_address="172.17.0.4",
    )
    catalog.apply(
        message({"web": [box, web(2, 20002, address="192.0.2.11", node="n2")]}, full=True)
    )
    inside = View(catalog, ["web"], NODE, Perspective.container("172.17.0.1"))
    assert inside.environment()["SHOAL_ENDPOINTS_WEB"] == "172.17.0.4:8080,192.0.2.11:20002"
    outside = View(catalog, ["web"], NODE, HOST)
    assert outside.environment()["SHOAL_ENDPOINTS_WEB"] == "192.0.2.10:20001,192.0.2.11:20002"
    (first, _) = inside.document()["services"]["web"]
    assert first == {
        "address": "172.17.0.4",
        "port": 8080,
        "ports": {"http": {"port": 8080, "protocol": "tcp"}},
        "slot": 1,
        "node": NODE,
        "task": "c1",
    }


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    write_atomically(path, b'{"old": true}\n')
    before = os.stat(path).st_ino
    with open(path, "rb") as reader:  # a reader that opened the old file keeps all of it
        write_atomically(path, b'{"new": true}\n')
        assert reader.read() == b'{"old": true}\n'
    assert path.read_bytes() == b'{"new": true}\n'
    assert os.stat(path).st_ino != before  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endpoints.json"]
    assert os.stat(path).st_mode & 0o777 == 0o644


# --------------------------------------------------------------- on a real process

TRAP = """
trap 'echo hup >> "$OUT"' HUP
trap 'echo alrm >> "$OUT"' ALRM
echo started >> "$OUT"
while :; do sleep 0.05; done
"""


def client_task(tmp_path: Path, change: str) -> Task:
    template = TaskTemplate.model_validate(
        {
            "command": ["sh", "-c", TRAP],
            "env": {"OUT": str(tmp_path / "signals.txt")},
            "discover": ["web"],
            "onEndpointsChange": change,
        }
    )
    return Task(
        id=f"client-{change.replace(':', '-')}",
        service="client",
        slot=1,
        node_id=NODE,
        template=template,
        created_at=datetime.now(UTC),
    )


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    process = ProcessRuntime(RuntimeSettings(state_dir=tmp_path / "process", node_name=NODE))
    yield process
    for handle in await process.recover():  # whatever a failed test left running
        await process.stop(handle, "SIGKILL", 0)
        await process.remove(handle)
    await process.aclose()


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def listed(path: Path) -> list[tuple[str, int]]:
    endpoints = json.loads(path.read_text())["services"]["web"]
    return [(e["address"], e["port"]) for e in endpoints]


async def lines_of(path: Path, count: int, timeout: float = 10) -> list[str]:
    async with asyncio.timeout(timeout):
        while True:
            lines = read_lines(path)
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.02)


async def started(
    tmp_path: Path, runtime: ProcessRuntime, discovery: NodeDiscovery, task: Task
) -> tuple[TaskHandle, dict[str, str]]:
    launch = await discovery.prepare(task, runtime, launch_for(task, NODE))
    handle = await runtime.start(launch)
    await lines_of(tmp_path / "signals.txt", 1)
    return handle, launch.env


def node_discovery(tmp_path: Path, catalog: Catalog) -> NodeDiscovery:
    settings = DnsSettings(listen=None, containers="off")
    return NodeDiscovery(catalog, NODE, settings, CollectorRegistry(), tmp_path / "endpoints")


async def test_a_change_rewrites_the_file_and_signals_the_command_once(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    catalog = Catalog()
    catalog.apply(message({"web": [web(1, 20001)]}, full=True))
    discovery = node_discovery(tmp_path, catalog)
    task = client_task(tmp_path, "signal:SIGHUP")
    handle, env = await started(tmp_path, runtime, discovery, task)
    restarts: list[str] = []
    discovery.watch(task, runtime, handle, restarts.append)
    assert env["SHOAL_ENDPOINTS_WEB"] == "127.0.0.2:20001"
    path = Path(env["SHOAL_ENDPOINTS_FILE"])
    assert path.parent == tmp_path / "endpoints" / task.id
    assert listed(path) == [("127.0.0.2", 20001)]
    before = open(path, "rb")  # noqa: ASYNC230, SIM115 - the old file, held across the change
    old = before.read()

    # Scaling 1 → 3 arrives as two messages: the file follows each, one signal follows both.
    catalog.apply(message({"web": [web(1, 20001), web(2, 20002)]}, full=False))
    catalog.apply(message({"web": [web(1, 20001), web(2, 20002), web(3, 20003)]}, full=False))
    assert [port for _, port in listed(path)] == [20001, 20002, 20003]
    before.seek(0)
    assert before.read() == old  # replaced by a rename: the old file was never touched
    before.close()
    signals = tmp_path / "signals.txt"
    assert await lines_of(signals, 2) == ["started", "hup"]
    await asyncio.sleep(SETTLE * 3)
    assert read_lines(signals) == ["started", "hup"]
    # A change elsewhere, or a message that changes nothing here: no rewrite, no signal.
    catalog.apply(message({"db": []}, full=False))
    catalog.apply(message({"web": [web(1, 20001), web(2, 20002), web(3, 20003)]}, full=True))
    await asyncio.sleep(SETTLE * 3)
    assert read_lines(signals) == ["started", "hup"]
    assert restarts == [] and (await runtime.inspect(handle)).running
    await runtime.stop(handle, "SIGTERM", 5)
    await discovery.release(task.id)
    assert not path.parent.exists()


async def test_a_signal_the_wrapper_does_not_trap_reaches_the_command_and_spares_it(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    catalog = Catalog()
    catalog.apply(message({}, full=True))
    discovery = node_discovery(tmp_path, catalog)
    task = client_task(tmp_path, "signal:SIGALRM")
    handle, _ = await started(tmp_path, runtime, discovery, task)
    await runtime.signal(handle, "SIGALRM")
    assert await lines_of(tmp_path / "signals.txt", 2) == ["started", "alrm"]
    assert (await runtime.inspect(handle)).running  # the wrapper lives: the exit is recorded
    await discovery.release(task.id)


async def test_restart_asks_the_runner_once_the_changes_settle(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    catalog = Catalog()
    catalog.apply(message({"web": []}, full=True))
    discovery = node_discovery(tmp_path, catalog)
    task = client_task(tmp_path, "restart")
    handle, env = await started(tmp_path, runtime, discovery, task)
    assert env["SHOAL_ENDPOINTS_WEB"] == ""
    restarts: list[str] = []
    asked = asyncio.Event()
    discovery.watch(task, runtime, handle, lambda why: (restarts.append(why), asked.set()))
    catalog.apply(message({"web": [web(1, 20001)]}, full=False))
    await asyncio.wait_for(asked.wait(), 5)
    assert restarts == ["the endpoints of web changed"]
    await discovery.release(task.id)


async def test_a_task_waits_for_the_first_catalog_before_it_starts(
    tmp_path: Path, runtime: ProcessRuntime
) -> None:
    catalog = Catalog()
    discovery = node_discovery(tmp_path, catalog)
    task = client_task(tmp_path, "none")
    preparing = asyncio.create_task(discovery.prepare(task, runtime, launch_for(task, NODE)))
    await asyncio.sleep(0.2)
    assert not preparing.done()
    catalog.apply(message({"web": [web(1, 20001)]}, full=True))
    launch = await asyncio.wait_for(preparing, 5)
    assert launch.env["SHOAL_ENDPOINTS_WEB"] == "127.0.0.2:20001"
    await discovery.release(task.id)


async def test_the_runner_restarts_by_shutting_the_task_down_for_the_orchestrator(
    tmp_path: Path,
) -> None:
    catalog = Catalog()
    catalog.apply(message({"web": []}, full=True))
    discovery = node_discovery(tmp_path, catalog)
    sim = SimRuntime(RuntimeSettings(state_dir=tmp_path / "sim", node_name=NODE))
    template = TaskTemplate.model_validate(
        {
            "runtime": "sim",
            "command": ["serve"],
            "discover": ["web"],
            "onEndpointsChange": "restart",
        }
    )
    task = Task(
        id="t1",
        service="client",
        slot=1,
        node_id=NODE,
        template=template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )
    reports: list[TaskStatus] = []
    changed = asyncio.Event()

    def report(task_id: str, status: TaskStatus) -> None:
        reports.append(status)
        changed.set()

    runner = TaskRunner(task, sim, report, NODE, None, discovery=discovery)
    async with asyncio.timeout(10):
        while not reports or reports[-1].state != TaskState.RUNNING:
            changed.clear()
            await changed.wait()
        catalog.apply(message({"web": [web(1, 20001)]}, full=False))
        while reports[-1].state != TaskState.SHUTDOWN:
            changed.clear()
            await changed.wait()
    assert reports[-1].message.startswith("restarted: the endpoints of web changed")
    await runner.remove()
    assert not (tmp_path / "endpoints" / "t1").exists()
    await sim.aclose()
