"""Health probes (``shoal/agent/health.py``) against real sockets and real processes.

The process runtime's hooks are used as they are: ``exec`` probes run a real
command on this machine, ``http`` and ``tcp`` probes connect to 127.0.0.1,
where each test serves what the probe should find.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.health import probe, watch
from shoal.models.container import HealthCheck
from shoal.runtimes.base import RuntimeSettings, TaskHandle
from shoal.runtimes.process import ProcessRuntime

HANDLE = TaskHandle(task_id="t1", runtime="process", data={})


@pytest.fixture
def runtime(tmp_path: Path) -> ProcessRuntime:
    return ProcessRuntime(RuntimeSettings(state_dir=tmp_path, node_name="n1"))


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """A tiny HTTP server on 127.0.0.1; set ``state["status"]`` to choose its answer."""
    state = {"status": 200}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(f"HTTP/1.0 {state['status']} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, state
    server.close()
    await server.wait_closed()


def check(**raw: Any) -> HealthCheck:
    return HealthCheck.model_validate({"interval": "50ms", "timeout": "1s", **raw})


async def test_exec_probe_passes_on_exit_0_and_fails_otherwise(runtime: ProcessRuntime) -> None:
    assert (await probe(check(exec=["true"]), runtime, HANDLE)).ok
    failed = await probe(check(exec=["sh", "-c", "echo not yet; exit 3"]), runtime, HANDLE)
    assert not failed.ok
    assert failed.detail == "exit code 3: not yet"


async def test_exec_probe_times_out(runtime: ProcessRuntime) -> None:
    result = await probe(check(exec=["sleep", "5"], timeout="200ms"), runtime, HANDLE)
    assert (result.ok, result.detail) == (False, "timed out after 0.2s")


async def test_http_probe_reads_the_status(
    runtime: ProcessRuntime, http_server: tuple[int, dict[str, int]]
) -> None:
    port, state = http_server
    assert (await probe(check(http={"port": port, "path": "/ok"}), runtime, HANDLE)).ok
    state["status"] = 503
    result = await probe(check(http={"port": port}), runtime, HANDLE)
    assert not result.ok
    assert result.detail.startswith(f"HTTP 503 from http://127.0.0.1:{port}/")


async def test_tcp_probe_connects_or_fails(
    runtime: ProcessRuntime, http_server: tuple[int, dict[str, int]]
) -> None:
    port, _ = http_server
    assert (await probe(check(tcp={"port": port}), runtime, HANDLE)).ok
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, not listening: refused
        assert not (await probe(check(tcp={"port": closed}), runtime, HANDLE)).ok


async def test_watch_reports_healthy_once_then_returns_why_unhealthy(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    flag, runs = tmp_path / "healthy", tmp_path / "runs"
    healthy: list[str] = []
    became_healthy = asyncio.Event()

    def on_healthy(detail: str) -> None:
        healthy.append(detail)
        became_healthy.set()

    async def probes_run(count: int) -> None:
        """Until the probe has run ``count`` times in all (each run appends a line)."""
        async with asyncio.timeout(5):
            while not runs.exists() or len(runs.read_text().splitlines()) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    # Each probe run leaves a line in ``runs``; it passes while ``flag`` exists.
    command = ["sh", "-c", f'echo run >> "{runs}"; test -e "{flag}"']
    job = asyncio.create_task(watch(check(exec=command, retries=3), runtime, HANDLE, on_healthy))
    await probes_run(2)  # two failures: not healthy yet, and not given up (retries=3)
    assert healthy == [] and not job.done()
    flag.touch()
    async with asyncio.timeout(5):
        await became_healthy.wait()
    passed = len(runs.read_text().splitlines())
    await probes_run(passed + 3)  # three more passing probes: still one report
    assert len(healthy) == 1 and not job.done()
    flag.unlink()
    async with asyncio.timeout(5):
        reason = await job
    assert reason == "unhealthy: exec probe failed 3 time(s) in a row (exit code 1)"


async def test_failures_in_the_start_period_do_not_count(runtime: ProcessRuntime) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    never = check(exec=["false"], retries=2, startPeriod="600ms")
    async with asyncio.timeout(5):
        reason = await watch(never, runtime, HANDLE, lambda detail: None)
    assert loop.time() - began >= 0.6
    assert "failed 2 time(s)" in reason


async def test_a_process_bound_to_its_node_address_only_passes_its_probes(
    runtime: ProcessRuntime,
) -> None:
    """A process told ``SHOAL_NODE_ADDRESS=127.0.0.2`` that binds there (and not on
    127.0.0.1) is probed where it was told to listen; one on 127.0.0.1 still passes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    there = await asyncio.start_server(answer, "127.0.0.2", 0)
    here = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        port = there.sockets[0].getsockname()[1]
        for kind in ("tcp", "http"):
            told = await probe(
                check(**{kind: {"port": port}}), runtime, HANDLE, address="127.0.0.2"
            )
            assert told.ok, told.detail
            assert "127.0.0.2" in told.detail
            assert not (await probe(check(**{kind: {"port": port}}), runtime, HANDLE)).ok
        loopback = here.sockets[0].getsockname()[1]
        result = await probe(check(tcp={"port": loopback}), runtime, HANDLE, address="127.0.0.2")
        assert result.ok, result.detail
    finally:
        there.close()
        here.close()
