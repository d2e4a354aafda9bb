"""Discovery on one node: the agent's DNS listeners and its tasks' endpoint files.

The agent answers the ``shoal.`` zone (``shoal.discovery.dns``) on:

- ``--dns-listen`` (default ``DEFAULT_DNS_LISTEN``, a loopback address beside
  systemd-resolved's ``127.0.0.53:53``), for processes and for a stub resolver of the
  node (docs/discovery.md);
- with ``--container-dns auto`` (the default), port 53 of each container engine's bridge
  gateway (the host's address on the network its containers are started on: found
  through the engine's API), where containers reach the node; ``--container-dns ADDRESS``:
  port 53 of that host address instead, for every engine. The container runtimes then
  give every container they start that address as its first name server (the host's
  reachable ones after it), with the search domains ``<stack>.shoal`` and ``shoal``.
  Queries there are answered as a container on this node sees the cluster
  (``shoal.discovery.perspective``).

A listener that cannot bind is left out with a warning (two agents on one machine share
the engines' gateways: the first one answers for both), except an explicit
``--dns-listen``, which the agent cannot start without.

Tasks with ``discover`` (``shoal.discovery.endpointsfile``): before such a task starts,
the agent waits (up to ``CATALOG_WAIT``) for its first catalog, writes the task's file in
``<runtime dir>/endpoints/<task id>/`` (bound read-only at ``/run/shoal/endpoints`` in a
container) and gives it the ``SHOAL_ENDPOINTS_*`` variables. On every catalog change that
touches a discovered service, the file is rewritten at once if its content changed; the
``onEndpointsChange`` action follows once the changes have settled (``SETTLE`` seconds
without another, at most ``SETTLE_MAX`` after the first), so a scale from 3 to 10 costs
one signal or one restart, not seven:

- ``signal:NAME``: the signal goes to the task's process (``Runtime.signal``);
- ``restart``: the runner stops the task (stop signal, grace) and reports it shut down;
  the orchestrator replaces a task shut down under it at once, in the same slot and
  whatever the restart policy, and the new task starts with fresh variables;
- ``none``: only the file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter

from shoal.api.address import split_host_port
from shoal.discovery.catalog import Catalog
from shoal.discovery.dns import DnsListener, Resolver, open_listener
from shoal.discovery.endpointsfile import CONTAINER_DIR, FILE_ENV, FILE_NAME, View, write_atomically
from shoal.discovery.forward import Forwarder
from shoal.discovery.perspective import HOST, Perspective
from shoal.errors import RuntimeBackendError
from shoal.models import Task
from shoal.runtimes.base import Runtime, TaskHandle, TaskLaunch

log = structlog.get_logger(__name__)

DEFAULT_DNS_LISTEN = "127.0.0.1:8653"
# Containers cannot name a port for their name server: resolv.conf takes addresses only.
CONTAINER_DNS_PORT = 53
# How long a task with ``discover`` waits for the agent's first catalog before it starts.
CATALOG_WAIT = 5.0
# onEndpointsChange fires once changes have settled for this long, at most SETTLE_MAX
# seconds after the first change.
SETTLE = 0.5
SETTLE_MAX = 5.0

Restart = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DnsSettings:
    # HOST:PORT, or None for no listener on the node.
    listen: str | None = DEFAULT_DNS_LISTEN
    # Whether ``listen`` was asked for (then failing to bind it stops the agent).
    required: bool = False
    # "auto": answer on the engines' bridge gateways and make that the containers' name
    # server; an address: answer there instead, for every container runtime (one that
    # containers reach: any of the host's non-loopback addresses); "off": neither.
    containers: str = "auto"


@dataclass(eq=False)
class _Watched:
    """One task with ``discover``: its file, and what a change does to it."""

    view: View
    path: Path
    action: str
    written: bytes = b""
    runtime: Runtime | None = None
    handle: TaskHandle | None = None
    restart: Restart | None = None
    changed: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    first_change: float | None = None


class NodeDiscovery:
    """The DNS listeners and endpoint files of one agent; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        node_id: str,
        settings: DnsSettings,
        registry: CollectorRegistry,
        files_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.node_id = node_id
        # <runtime dir>/endpoints: one directory per task with discover.
        self.files_dir = files_dir
        self._watched: dict[str, _Watched] = {}
        self._signals: set[asyncio.Task[None]] = set()
        self._catalog_arrived = asyncio.Event()
        catalog.subscribe(self._catalog_changed)
        # Runtime name → the host's address on its containers' network.
        self.gateways: dict[str, str] = {}
        self.queries = Counter(
            "shoal_agent_dns_queries_total",
            "DNS queries answered by this agent, by response code (error: the handler failed).",
            ["rcode"],
            registry=registry,
        )
        self.resolver = Resolver(
            catalog, node_id, observe=lambda rcode: self.queries.labels(rcode).inc()
        )
        self.listener: DnsListener | None = None
        # Runtime name → its listener on the engine's gateway.
        self.container_listeners: dict[str, DnsListener] = {}

    @property
    def address(self) -> str | None:
        """Where the node's own listener answers (HOST:PORT), if it has one."""
        return self.listener.address if self.listener is not None else None

    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        """Open the node's listener, then the containers' (see the module docstring)."""
        listen = self.settings.listen
        if listen is not None:
            host, port = split_host_port(listen)
            try:
                self.listener = await open_listener(self.resolver, host, port)
            except OSError as exc:
                if self.settings.required:
                    raise RuntimeBackendError(f"cannot answer DNS on {listen}: {exc}") from exc
                log.warning("dns.listen_failed", listen=listen, error=str(exc))
            else:
                log.info("dns.listening", address=self.listener.address)
        await self.watch_runtimes(runtimes)

    async def watch_runtimes(self, runtimes: Mapping[str, Runtime]) -> None:
        """Answer on the gateway of each runtime that has one and has no listener yet.

        Called at start and whenever the runtimes changed (an engine that came up later).
        """
        mode = self.settings.containers
        if mode == "off":
            return
        for name, runtime in runtimes.items():
            if name in self.container_listeners:
                continue
            if mode != "auto":
                gateway: str | None = mode if runtime.container_fields else None
            else:
                try:
                    gateway = await runtime.dns_gateway()
                except RuntimeBackendError as exc:  # the engine is down: try when it is back
                    log.debug("dns.no_gateway", runtime=name, error=str(exc))
                    continue
            if gateway is None:
                continue
            self.gateways[name] = gateway
            sources = await _subnets(runtime)
            shared = [
                listener
                for listener in self.container_listeners.values()
                if listener.perspective.gateway == gateway
            ]
            try:
                listener = (
                    shared[0]
                    if shared
                    else await open_listener(
                        self.resolver,
                        gateway,
                        CONTAINER_DNS_PORT,
                        Perspective.container(gateway),
                        freebind=True,
                        forwarder=Forwarder.from_resolv_conf(),
                        sources=sources,
                    )
                )
            except OSError as exc:
                log.warning(
                    "dns.container_listen_failed",
                    runtime=name,
                    address=f"{gateway}:{CONTAINER_DNS_PORT}",
                    error=str(exc),
                )
                continue
            if shared:
                listener.allow(sources)
            self.container_listeners[name] = listener
            runtime.use_dns(gateway)
            log.info("dns.listening_for_containers", runtime=name, address=listener.address)

    # ----------------------------------------------------------- endpoint files

    def perspective(self, runtime: Runtime) -> Perspective:
        """How tasks of ``runtime`` reach the others (containers: through their gateway)."""
        gateway = self.gateways.get(runtime.name)
        return Perspective.container(gateway) if gateway and runtime.container_fields else HOST

    def _directory(self, task_id: str) -> Path:
        if self.files_dir is None:
            raise RuntimeBackendError("this agent keeps no endpoint files")
        if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
            raise RuntimeBackendError(f"invalid task id {task_id!r}")
        return self.files_dir / task_id

    def _register(self, task: Task, runtime: Runtime) -> _Watched:
        template = task.template
        view = View(self.catalog, template.discover, self.node_id, self.perspective(runtime))
        watched = _Watched(view, self._directory(task.id) / FILE_NAME, template.on_endpoints_change)
        self._watched[task.id] = watched
        return watched

    async def prepare(self, task: Task, runtime: Runtime, launch: TaskLaunch) -> TaskLaunch:
        """Write ``task``'s endpoints file and add its variables (and, for a container, the
        mount of its directory) to ``launch``; ``launch`` itself if it discovers nothing."""
        if not task.template.discover:
            return launch
        if not self.catalog.received:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CATALOG_WAIT):
                    await self._catalog_arrived.wait()
        watched = self._register(task, runtime)
        await asyncio.to_thread(self._write, watched)
        env = {**launch.env, **watched.view.environment()}
        if runtime.container_fields:
            env[FILE_ENV] = f"{CONTAINER_DIR}/{FILE_NAME}"
            mounts = (*launch.file_mounts, (CONTAINER_DIR, str(watched.path.parent)))
            return replace(launch, env=env, file_mounts=mounts)
        env[FILE_ENV] = str(watched.path)
        return replace(launch, env=env)

    def watch(self, task: Task, runtime: Runtime, handle: TaskHandle, restart: Restart) -> None:
        """From now on ``onEndpointsChange`` acts on the running task (also an adopted one)."""
        if not task.template.discover or self.files_dir is None:
            return
        watched = self._watched.get(task.id)
        if watched is None:  # adopted after an agent restart: bring its file up to date
            watched = self._register(task, runtime)
            watched.runtime, watched.handle, watched.restart = runtime, handle, restart
            with contextlib.suppress(OSError):
                watched.written = watched.path.read_bytes()
            self._refresh(watched, set(task.template.discover))
        watched.runtime, watched.handle, watched.restart = runtime, handle, restart

    async def release(self, task_id: str) -> None:
        """The task ended here: no more changes for it, and its directory goes."""
        watched = self._watched.pop(task_id, None)
        if watched is not None and watched.timer is not None:
            watched.timer.cancel()
        if self.files_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._directory(task_id), True)

    async def forget_except(self, task_ids: Iterable[str]) -> None:
        """After an agent restart: remove the directories of tasks that no longer run here."""
        if self.files_dir is None or not self.files_dir.is_dir():
            return
        keep = set(task_ids)
        for entry in self.files_dir.iterdir():
            if entry.name not in keep:
                await self.release(entry.name)

    def _write(self, watched: _Watched) -> bool:
        """Rewrite the file if its content changed; True if it did."""
        data = watched.view.render()
        if data == watched.written:
            return False
        directory = watched.path.parent
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            for parent in (directory.parent.parent, directory.parent):
                os.chmod(parent, 0o711)  # task users may pass through, not list
            os.chmod(directory, 0o755)
        write_atomically(watched.path, data)
        watched.written = data
        return True

    def _catalog_changed(self, names: frozenset[str]) -> None:
        self._catalog_arrived.set()
        for watched in list(self._watched.values()):
            touched = names.intersection(watched.view.services)
            if touched:
                self._refresh(watched, touched)

    def _refresh(self, watched: _Watched, touched: set[str] | frozenset[str]) -> None:
        try:
            if not self._write(watched):
                return
        except OSError as exc:
            log.warning("endpoints.write_failed", path=str(watched.path), error=str(exc))
            return
        if watched.action == "none" or watched.handle is None:
            return  # a task still starting reads the new file when it starts
        watched.changed |= touched
        loop = asyncio.get_running_loop()
        now = loop.time()
        if watched.first_change is None:
            watched.first_change = now
        if watched.timer is not None:
            watched.timer.cancel()
        delay = min(SETTLE, max(0.0, watched.first_change + SETTLE_MAX - now))
        watched.timer = loop.call_later(delay, self._act, watched)

    def _act(self, watched: _Watched) -> None:
        reason = f"the endpoints of {', '.join(sorted(watched.changed))} changed"
        watched.changed.clear()
        watched.timer = watched.first_change = None
        if watched.action == "restart":
            if watched.restart is not None:
                watched.restart(reason)
            return
        _, _, signal = watched.action.partition(":")
        if watched.runtime is None or watched.handle is None:
            return
        job = asyncio.create_task(self._signal(watched.runtime, watched.handle, signal, reason))
        self._signals.add(job)
        job.add_done_callback(self._signals.discard)

    async def _signal(self, runtime: Runtime, handle: TaskHandle, signal: str, why: str) -> None:
        try:
            await runtime.signal(handle, signal)
        except RuntimeBackendError as exc:
            log.warning("endpoints.signal_failed", task=handle.task_id, error=str(exc))
            return
        log.info("endpoints.signalled", task=handle.task_id, signal=signal, reason=why)

    async def aclose(self) -> None:
        for watched in self._watched.values():
            if watched.timer is not None:
                watched.timer.cancel()
        for job in list(self._signals):
            job.cancel()
        listeners = {id(x): x for x in [self.listener, *self.container_listeners.values()]}
        for listener in listeners.values():
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.aclose()
        self.listener = None
        self.container_listeners.clear()


async def _subnets(runtime: Runtime) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The runtime's container subnets: whom its gateway's DNS listener answers (besides
    loopback). None known: only loopback, and the agent says so."""
    try:
        found = [ipaddress.ip_network(text, strict=False) for text in await runtime.dns_subnets()]
    except (RuntimeBackendError, ValueError) as exc:
        log.warning("dns.no_container_subnets", runtime=runtime.name, error=str(exc))
        return []
    if not found:
        log.warning("dns.no_container_subnets", runtime=runtime.name, error="none reported")
    return found
