"""Health checks: the probes of a template's ``healthcheck``, run by the agent.

The same code serves every runtime; the runtime only says where a probe runs
(``Runtime.exec`` for ``exec`` probes: on the node for processes, inside the
container for containers) and where ``http`` and ``tcp`` probes connect
(``Runtime.probe_host``: the container's address; loopback for a process, which
is probed first at the ``SHOAL_NODE_ADDRESS`` it was told to bind to). A probe
may name one of the task's ports instead of a number: a process's port as the
agent picked it, a container's target port.

Semantics, close to Docker's: the first probe runs as soon as the task was
started, then one every ``interval``. A probe that succeeds makes the task
healthy. A probe fails when it errs, times out (``timeout``), exits non-zero
(``exec``), cannot connect (``tcp``, ``http``) or answers an HTTP status
outside 200-399. Failures during ``startPeriod`` do not count unless the task
was already healthy; ``retries`` counted failures in a row make it unhealthy,
and ``watch`` returns the reason. The task runner then stops and fails the
task, and the restart policy applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shoal.errors import RuntimeBackendError
from shoal.models.container import HealthCheck
from shoal.runtimes.base import Runtime, TaskHandle

_DETAIL_CHARS = 200


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str


async def probe(
    check: HealthCheck,
    runtime: Runtime,
    handle: TaskHandle,
    ports: Mapping[str, int] = {},
    address: str = "",
) -> ProbeResult:
    """Run the check's probe once; ``ports`` resolves a port named in the probe, and
    ``address`` is the task's ``SHOAL_NODE_ADDRESS`` (see ``_hosts``)."""
    try:
        async with asyncio.timeout(check.timeout):
            if check.exec:
                result = await runtime.exec(handle, check.exec, check.timeout)
                output = result.output.strip()[-_DETAIL_CHARS:]
                detail = f"exit code {result.exit_code}" + (f": {output}" if output else "")
                return ProbeResult(result.exit_code == 0, detail)
            port = _resolve(check.port, ports)
            *first, last = _hosts(await runtime.probe_host(handle), address)
            for host in first:
                with contextlib.suppress(OSError):
                    return await _connect(check, host, port)
            return await _connect(check, last, port)
    except TimeoutError:
        return ProbeResult(False, f"timed out after {check.timeout:g}s")
    except (OSError, RuntimeBackendError) as exc:
        return ProbeResult(False, str(exc)[:_DETAIL_CHARS] or type(exc).__name__)


async def _connect(check: HealthCheck, host: str, port: int) -> ProbeResult:
    if check.http:
        return await _http(host, port, check.http.path)
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    return ProbeResult(True, f"connected to {host}:{port}")


def _hosts(probe_host: str, address: str) -> list[str]:
    """Where ``http`` and ``tcp`` probes connect, in turn. A task on the node's own network
    (its runtime probes it on loopback: a process) was told ``SHOAL_NODE_ADDRESS`` to
    bind to: that address first, then loopback, for a server that listens there only."""
    try:
        local = ipaddress.ip_address(probe_host).is_loopback
    except ValueError:
        local = False
    if local and address and address != probe_host:
        return [address, probe_host]
    return [probe_host]


def _resolve(port: int | str | None, ports: Mapping[str, int]) -> int:
    if isinstance(port, int):
        return port
    if port is None or port not in ports:  # the models refuse a name that is not a port
        raise OSError(f"no port named {port!r} on this task")
    return ports[port]


async def _http(host: str, port: int, path: str) -> ProbeResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: shoal-health\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        status_line = (await reader.readline()).decode(errors="replace").strip()
    finally:
        writer.close()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(False, f"not an HTTP answer: {status_line[:80]!r}")
    code = int(parts[1])
    return ProbeResult(200 <= code < 400, f"HTTP {code} from http://{host}:{port}{path}")


async def watch(
    check: HealthCheck,
    runtime: Runtime,
    handle: TaskHandle,
    on_healthy: Callable[[str], None],
    ports: Mapping[str, int] = {},
    address: str = "",
) -> str:
    """Probe until the task is unhealthy; return why. Calls ``on_healthy`` once, when it is."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    healthy = False
    failures = 0
    while True:
        result = await probe(check, runtime, handle, ports, address)
        if result.ok:
            failures = 0
            if not healthy:
                healthy = True
                on_healthy(result.detail)
        elif healthy or loop.time() - started >= check.start_period:
            failures += 1
            if failures >= check.retries:
                return (
                    f"unhealthy: {check.kind} probe failed {failures} time(s) in a row "
                    f"({result.detail})"
                )
        await asyncio.sleep(check.interval)
