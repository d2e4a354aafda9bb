"""The agent: one node's session with the managers and the tasks it runs.

``open_agent(settings)`` starts the runtimes, recovers what they still run from
an earlier life of this agent, and keeps one session with the leading manager
(trying each address in turn, with jittered backoff between attempts; a
follower redirects to the leader, and the session's first message and every
heartbeat reply bring the current manager list, so the agent knows every
manager, including ones that joined or came back later). A manager that does
not open the session within ``SESSION_OPEN_TIMEOUT`` (paused, wedged) or
stops answering heartbeats is left for the next one. Per session it
heartbeats, applies assignments to ``TaskRunner``s, flushes status reports and
answers log requests. Losing the manager never stops running tasks; a new
session simply receives the full assignment set again.

Handles recovered at start are only removed once the first full assignment
set proves the manager no longer wants them, so a restart adopts instead of
restarting.

Identity: the node certificate in ``STATE_DIR/identity/`` is the agent's only
credential. Without one, the agent joins once with its token through the join
listener (``shoal.security.join``: the CA digest in the token is checked before
anything is sent) and keeps the result; it renews the certificate at a random
50-80 % of its lifetime over its mutual-TLS connection, without ending the
session (new connections use the new certificate).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

import shoal
from shoal.agent.discovery import DnsSettings, NodeDiscovery
from shoal.agent.execs import ExecJobs
from shoal.agent.ports import DEFAULT_RANGE, PortAllocator
from shoal.agent.reporter import CallSender, StatusReporter, StreamSender
from shoal.agent.taskfiles import TaskFileStore, default_runtime_dir
from shoal.agent.taskrunner import TaskRunner
from shoal.api.transport import DISPATCHER_SERVICE, Client, Duplex, Payload, open_channel
from shoal.discovery.catalog import Catalog
from shoal.errors import ApiError, AuthError, RuntimeBackendError
from shoal.exposition import MetricsListener, serve_metrics
from shoal.logtimes import format_time, parse_time
from shoal.models import NodeDescription, RuntimeInfo, Task, TaskState, TaskStatus
from shoal.models.node import DEFAULT_MAX_TASKS
from shoal.runtimes.base import Runtime, RuntimeSettings, TaskHandle
from shoal.runtimes.registry import available_runtime_classes
from shoal.security.ca import renew_at
from shoal.security.credentials import IDENTITY_DIR, TlsIdentity
from shoal.security.enroll import join, renew

log = structlog.get_logger(__name__)

# How often the agent re-checks its runtimes (engines may come and go).
PROBE_PERIOD = 5.0
HEARTBEAT_FAILURES = 3
# Heartbeat periods without any message after which a manager is taken for paused or
# wedged and left: as long as HEARTBEAT_FAILURES calls that timed out once took, plus
# the 4 periods a manager may leave heartbeats unanswered on a quiet session
# (shoal.manager.dispatcher.ANSWER_EVERY).
HEARTBEAT_PATIENCE = HEARTBEAT_FAILURES * 4 + 4
# gRPC codes of a call that may well succeed if simply made again.
TRANSIENT = frozenset({"DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"})
LOG_BATCH = 0.1
# Session messages read ahead of the one being handled.
READ_AHEAD = 8
LOG_QUEUE_LIMIT = 10_000
# A manager that has not opened the session by then is paused or wedged: try another.
SESSION_OPEN_TIMEOUT = 15.0
# Reconnecting: full jitter over an exponential backoff (0.5 s doubling to 5 s),
# so agents that lose their sessions together come back spread out; the cap
# stays well inside the grace a manager gives nodes when it starts leading.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 5.0
# The most manager addresses remembered (managers told of first, then earlier ones).
KNOWN_MANAGERS = 32


@dataclass(frozen=True, slots=True)
class AgentSettings:
    managers: list[str]
    token: str
    state_dir: Path
    name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    metrics_listen: str | None = None
    runtime_options: dict[str, dict[str, str]] = field(default_factory=dict)
    probe_period: float = PROBE_PERIOD
    # Only these runtimes (None: every installed one); simulated nodes use {"sim"}.
    runtimes: frozenset[str] | None = None
    # Reported as the node's hostname (None: this machine's).
    hostname: str | None = None
    # Where tasks' secrets and configs are written (a tmpfs per task; never the
    # state dir). None: shoal.agent.taskfiles.default_runtime_dir.
    runtime_dir: Path | None = None
    # The most tasks this node takes (None: DEFAULT_MAX_TASKS); the scheduler honours it.
    max_tasks: int | None = None
    # Generic resources, kind → units (shoal.agent.resources.node_resources).
    resources: dict[str, list[str]] = field(default_factory=dict)
    # The join listener (default: the first manager's port + 2); used once, without a cert.
    join: str | None = None
    # A certificate given by whoever starts the agent (``shoal up``), instead of joining.
    identity: TlsIdentity | None = None
    # Where the agent answers DNS for the ``shoal.`` zone (shoal.agent.discovery).
    dns: DnsSettings = field(default_factory=DnsSettings)
    # The address other nodes reach this one at; None: the one the manager sees.
    advertise_address: str | None = None
    # Where ports the tasks leave to the agent (``published: 0``) come from.
    port_range: tuple[int, int] = DEFAULT_RANGE
    # Whether the managers send this agent the endpoint catalog (simulated nodes: no).
    catalog: bool = True

    @property
    def join_address(self) -> str:
        if self.join:
            return self.join
        host, _, port = self.managers[0].rpartition(":")
        return f"{host}:{int(port) + 2}"


def _memory_bytes() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


class AgentMetrics:
    """Task starts and exits per runtime."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.starts = Counter(
            "shoal_agent_task_starts_total",
            "Tasks started, by runtime.",
            ["runtime"],
            registry=registry,
        )
        self.exits = Counter(
            "shoal_agent_task_exits_total",
            "Tasks that ended, by runtime and outcome (complete, failed, shutdown).",
            ["runtime", "outcome"],
            registry=registry,
        )
        self.running = Gauge(
            "shoal_agent_tasks",
            "Tasks assigned to this agent, running or kept as history.",
            registry=registry,
        )

        # The counters' children by label: looking one up costs more than the count.
        self._starts: dict[str, Counter] = {}
        self._exits: dict[tuple[str, str], Counter] = {}

    def runtime_ready(self, runtime: str) -> None:
        """Export a runtime's counters from 0, so the first start or exit shows in rate()."""
        self.starts.labels(runtime)
        for outcome in ("complete", "failed", "shutdown"):
            self.exits.labels(runtime, outcome)

    def started(self, runtime: str) -> None:
        child = self._starts.get(runtime)
        if child is None:
            child = self._starts[runtime] = self.starts.labels(runtime)
        child.inc()

    def exited(self, runtime: str, outcome: str) -> None:
        child = self._exits.get((runtime, outcome))
        if child is None:
            child = self._exits[runtime, outcome] = self.exits.labels(runtime, outcome)
        child.inc()


class Agent:
    """A running agent; see ``open_agent``."""

    def __init__(self, settings: AgentSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self.runtimes: dict[str, Runtime] = {}
        self.runtime_info: list[RuntimeInfo] = []
        self.runners: dict[str, TaskRunner] = {}
        self.recovered: dict[str, tuple[Runtime, TaskHandle]] = {}
        self.reporter = StatusReporter(settings.name)
        self.connected = asyncio.Event()
        self.fatal: BaseException | None = None
        self._log_jobs: dict[str, asyncio.Task[Payload]] = {}
        self._execs = ExecJobs()
        self._removals: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        # Manager addresses to try, learned in sessions; a redirect to the leader goes first.
        self.managers = list(settings.managers)
        self.redirect: str | None = None
        self.identity: TlsIdentity | None = settings.identity
        self.manager_address: str | None = None  # of the current session
        self._jitter = random.Random()
        self.metrics.running.set_function(lambda: len(self.runners))
        self.metrics_listener: MetricsListener | None = None
        self.files = TaskFileStore(
            settings.runtime_dir or default_runtime_dir(settings.name, settings.state_dir)
        )
        self.ports = PortAllocator(settings.state_dir / "ports", settings.port_range)
        # The endpoints of every service, as the managers last sent them; kept when
        # the session ends, so lookups on this node keep working without managers.
        self.catalog = Catalog()
        self.discovery = NodeDiscovery(
            self.catalog,
            settings.name,
            settings.dns,
            self.registry,
            files_dir=self.files.runtime_dir / "endpoints",
        )
        # Where others reach this node: as given, else as the manager saw us (per session).
        self.advertise_address = settings.advertise_address or ""

    async def start(self) -> None:
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        for name, cls in available_runtime_classes().items():
            if settings.runtimes is not None and name not in settings.runtimes:
                continue
            runtime_settings = RuntimeSettings(
                state_dir=settings.state_dir / "runtimes" / name,
                node_name=settings.name,
                options=settings.runtime_options.get(name, {}),
            )
            runtime = cls(runtime_settings)
            self.runtimes[name] = runtime
            try:
                handles = await runtime.recover()
            except RuntimeBackendError as exc:  # e.g. its engine is down: adopt nothing
                log.warning("agent.recover_failed", runtime=name, error=str(exc))
                handles = []
            for handle in handles:
                self.recovered[handle.task_id] = (runtime, handle)
        for task_id in self.files.leftovers():  # files of tasks that ended while we were away
            if task_id not in self.recovered:
                await self.files.release(task_id)
        await self.discovery.forget_except(self.recovered)
        self.ports.load()  # the ports of tasks adopted below stay theirs
        self.ports.forget_except(self.recovered)
        self.runtime_info = [await r.describe() for r in self.runtimes.values()]
        for info in self.runtime_info:
            if info.available:
                self.metrics.runtime_ready(info.name)
            if not info.available:  # e.g. an engine that is not running: say why, once
                log.warning("agent.runtime_unavailable", runtime=info.name, reason=info.message)
        await self.discovery.start(self._available_runtimes())
        if settings.metrics_listen:  # reported at registration, for service discovery
            self.metrics_listener = serve_metrics(settings.metrics_listen, self.registry)
        log.info(
            "agent.started",
            node=settings.name,
            recovered=len(self.recovered),
            runtimes=[r.name for r in self.runtime_info if r.available],
        )
        if self.identity is None:
            self.identity = TlsIdentity.load(settings.state_dir / IDENTITY_DIR)
        if self.identity is not None and self.identity.expired():
            log.warning("agent.certificate_expired", not_after=str(self.identity.info.not_after))
            self.identity = None
        self._main = asyncio.create_task(self._sessions(), name="agent-sessions")

    async def wait(self) -> None:
        """Return when the agent stops for good (e.g. its join token was refused)."""
        assert self._main is not None
        await self._main

    async def aclose(self) -> None:
        if self._main:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        for job in self._log_jobs.values():
            job.cancel()
        self._execs.cancel_all()
        for runner in self.runners.values():
            await runner.aclose()
        for runtime in self.runtimes.values():
            await runtime.aclose()
        await self.discovery.aclose()
        if self.metrics_listener is not None:
            self.metrics_listener.close()

    def _available_runtimes(self) -> dict[str, Runtime]:
        working = {info.name for info in self.runtime_info if info.available}
        return {name: r for name, r in self.runtimes.items() if name in working}

    def description(self) -> NodeDescription:
        return NodeDescription(
            hostname=self.settings.hostname or socket.gethostname(),
            labels=self.settings.labels,
            runtimes=self.runtime_info,
            cpus=float(os.cpu_count() or 1),
            memory=_memory_bytes(),
            agent_version=shoal.__version__,
            max_tasks=self.settings.max_tasks or DEFAULT_MAX_TASKS,
            metrics_address=self.metrics_listener.address if self.metrics_listener else "",
            advertise_address=self.settings.advertise_address or "",
            generic_resources=self.settings.resources,
        )

    # -------------------------------------------------------------- sessions

    def backoff(self, failures: int) -> float:
        """Seconds to wait before attempt ``failures`` + 1: full jitter, capped."""
        return self._jitter.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1)))

    def _next_manager(self, previous: str | None) -> str:
        """The manager after ``previous`` in the known list (the first one to begin with)."""
        if previous in self.managers:
            return self.managers[(self.managers.index(previous) + 1) % len(self.managers)]
        return self.managers[0]

    async def _join(self) -> TlsIdentity:
        """Join with the token until it works or is refused (AuthError)."""
        settings = self.settings
        if not settings.token:
            raise AuthError(
                f"no certificate in {settings.state_dir / IDENTITY_DIR} and no join token: "
                "give the agent --token, --token-file or SHOAL_TOKEN"
            )
        failures = 0
        while True:
            try:
                identity = await join(settings.join_address, settings.token, settings.name)
            except ApiError as exc:
                log.warning("agent.join_failed", join=settings.join_address, error=exc.message)
                failures += 1
                await asyncio.sleep(self.backoff(failures))
                continue
            identity.save(settings.state_dir / IDENTITY_DIR)
            log.info("agent.joined", node=settings.name, role=identity.info.role)
            return identity

    async def _renewal(self) -> None:
        """Renew the certificate at a random 50-80 % of its lifetime, retrying until done."""
        while True:
            assert self.identity is not None
            due = renew_at(self.identity.info)
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            retry = 1.0
            while True:
                address = self.manager_address or self.managers[0]
                try:
                    renewed = await renew(address, self.identity)
                except ApiError as exc:
                    log.warning("agent.renewal_failed", manager=address, error=exc.message)
                    if exc.code == "PERMISSION_DENIED":
                        return  # revoked: the session ends with the same refusal
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, 10.0)
                    continue
                renewed.save(self.settings.state_dir / IDENTITY_DIR)
                self.identity = renewed
                log.info("agent.certificate_renewed", not_after=str(renewed.info.not_after))
                break

    async def _sessions(self) -> None:
        if self.identity is None:
            try:
                self.identity = await self._join()
            except AuthError as exc:
                self.fatal = exc
                log.error("agent.join_refused", join=self.settings.join_address, error=str(exc))
                return
        renewal = asyncio.create_task(self._renewal(), name="agent-cert-renewal")
        try:
            await self._session_loop()
        finally:
            renewal.cancel()

    async def _session_loop(self) -> None:
        failures = 0
        address: str | None = None
        while True:
            # A follower's redirect names the leader: go there next.
            target, self.redirect = self.redirect, None
            address = target or self._next_manager(address)
            try:
                if await self._session(address):
                    failures = 0
            except AuthError as exc:
                self.fatal = exc
                log.error("agent.refused", manager=address, error=str(exc))
                return
            except ApiError as exc:
                if exc.code == "PERMISSION_DENIED":
                    self.fatal = AuthError(exc.message)
                    log.error("agent.refused", manager=address, error=exc.message)
                    if "revoked" in exc.message:
                        await self._leave()
                    return
                log.warning("agent.session_lost", manager=address, error=exc.message)
            self.connected.clear()
            if self.redirect is None:  # a redirect to the leader is followed at once
                failures += 1
                await asyncio.sleep(self.backoff(failures))

    async def _session(self, address: str) -> bool:
        """One session with ``address``; True if it was established (and then ended)."""
        assert self.identity is not None
        channel = open_channel(address, self.identity)
        self.manager_address = address
        client = Client(channel, DISPATCHER_SERVICE)
        helpers: list[asyncio.Task[Any]] = []
        # Set by any helper that ends (a failed call, changed runtimes): the
        # session is then over. One event per session, so a late callback of
        # the previous session's helpers cannot end the next one.
        ended = asyncio.Event()
        try:
            request = {
                "nodeId": self.settings.name,
                "description": self.description().to_wire(),
                "catalog": self.settings.catalog,
                # Any message from the manager is a sign it hears us (heartbeats are
                # answered only when it sends nothing else: shoal.manager.dispatcher).
                "hearsAny": True,
            }
            stream = client.duplex("Session", request)
            heard = _Heard(asyncio.get_running_loop().time(), 1.0)
            status_sender: StreamSender | None = None
            reconnect = asyncio.create_task(ended.wait())
            helpers.append(reconnect)
            opened = False

            async def open_timeout() -> None:
                await asyncio.sleep(SESSION_OPEN_TIMEOUT)
                if not opened:
                    ended.set()

            helpers.append(asyncio.create_task(open_timeout()))
            async for message in _until(stream, reconnect):
                kind = message.get("type")
                opened = True
                # Any message says the manager is there (heartbeats are answered only
                # now and then: shoal.manager.dispatcher).
                heard.at = asyncio.get_running_loop().time()
                if kind == "redirect":
                    self._learn(message.get("managers", []))
                    self.redirect = message.get("leader")
                    log.info("agent.redirected", manager=address, leader=self.redirect)
                    if self.redirect is None:  # an election is on: wait a moment
                        await asyncio.sleep(0.5)
                    return False
                if kind == "session":
                    self._learn(message.get("managers", []))
                    session_id = str(message["sessionId"])
                    if not self.settings.advertise_address and message.get("advertiseAddress"):
                        self.advertise_address = str(message["advertiseAddress"])
                    period = float(message["heartbeatPeriod"])
                    heard.at, heard.period = asyncio.get_running_loop().time(), period
                    if message.get("streamStatus"):
                        status_sender = StreamSender(stream)
                    beating = (
                        self._stream_heartbeats(
                            stream,
                            heard,
                            status_sender if message.get("beatsOnStatus") else None,
                        )
                        if message.get("streamHeartbeats")
                        else self._heartbeat(client, session_id, period)  # an older manager
                    )
                    sender = status_sender or CallSender(client, self.settings.name, session_id)
                    for helper_job in (
                        beating,
                        self.reporter.run(sender),
                        self._probe(),
                    ):
                        helper = asyncio.create_task(helper_job)
                        helper.add_done_callback(lambda _: ended.set())
                        helpers.append(helper)
                    log.info("agent.connected", manager=address, session=session_id)
                elif kind == "status" and status_sender is not None:
                    status_sender.answered(message)
                elif kind == "heartbeat":
                    heard.period = float(message.get("heartbeatPeriod", heard.period))
                    self._learn(message.get("managers", []))
                elif kind == "assignments":
                    await self._assign(message)
                    self.connected.set()
                elif kind == "endpoints":
                    self.catalog.apply(message)
                elif kind == "logs":
                    self._start_logs(client, message)
                elif kind == "logs-cancel":
                    job = self._log_jobs.pop(str(message["subscriptionId"]), None)
                    if job:
                        job.cancel()
                elif kind == "exec":
                    self._execs.start(client, message, self.runners)
                elif kind == "exec-cancel":
                    self._execs.cancel(str(message["execId"]))
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await channel.close()
        if not opened:
            raise ApiError(
                "UNAVAILABLE", f"no session within {SESSION_OPEN_TIMEOUT:.0f}s (manager paused?)"
            )
        return True

    async def _leave(self) -> None:
        """This node was removed from the cluster: its tasks now run elsewhere, stop them."""
        log.warning("agent.removed_from_cluster", tasks=len(self.runners))
        for task_id in list(self.runners):
            runner = self.runners.pop(task_id)
            await runner.remove()
        for runtime, handle in self.recovered.values():
            await _discard(runtime, handle, self.files, self.ports)
        self.recovered.clear()

    def _learn(self, managers: list[str]) -> None:
        """The managers a manager told us about first, then earlier ones, then our seeds."""
        if managers:
            known = [*managers, *self.managers, *self.settings.managers]
            self.managers = list(dict.fromkeys(str(m) for m in known))[:KNOWN_MANAGERS]

    async def _stream_heartbeats(
        self, stream: Duplex, heard: _Heard, status: StreamSender | None = None
    ) -> None:
        """Heartbeat on the session stream until the manager stops answering.

        The manager answers heartbeats now and then, and sends other messages;
        any of them sets ``heard``. A slow answer is not a dead manager, and
        re-registering is far more expensive for a busy one than a late
        heartbeat, so the session is given up only after ``HEARTBEAT_PATIENCE``
        periods without any message (a manager paused or wedged), or when the
        stream itself ends (the manager refused the session or went away).
        ``status``: the manager counts a status batch as a heartbeat, so none
        is sent within a period after one.
        """
        loop = asyncio.get_running_loop()
        beat = loop.time()
        while True:
            last = max(beat, status.sent_at) if status is not None else beat
            await asyncio.sleep(max(0.0, last + heard.period - loop.time()))
            now = loop.time()
            left = heard.at + HEARTBEAT_PATIENCE * heard.period - now
            try:
                if left <= 0:
                    raise TimeoutError
                if status is not None and status.sent_at + heard.period > now:
                    continue  # a status batch went meanwhile: it was this period's beat
                beat = now
                async with asyncio.timeout(left):
                    await stream.send({"type": "heartbeat"})
            except TimeoutError:
                log.warning(
                    "agent.heartbeats_unanswered",
                    seconds=round(loop.time() - heard.at, 1),
                )
                return

    async def _heartbeat(self, client: Client, session_id: str, period: float) -> None:
        """Heartbeat calls (to a manager older than heartbeats on the session stream) until
        the session is refused or heartbeats keep failing.

        A slow answer is not a dead manager: a heartbeat may take up to the
        node's grace to arrive and still be in time, and one that timed out is
        simply followed by the next. Re-registering is far more expensive for a
        busy manager than a late heartbeat, so only a refused session (the
        manager no longer knows it) or ``HEARTBEAT_FAILURES`` failures in a row
        end the session.
        """
        request = {"nodeId": self.settings.name, "sessionId": session_id}
        failures = 0
        while True:
            await asyncio.sleep(period)
            try:
                reply = await client.call("Heartbeat", request, timeout=3 * period)
            except ApiError as exc:
                failures += 1
                log.warning("agent.heartbeat_failed", error=exc.message, in_a_row=failures)
                if exc.code not in TRANSIENT or failures >= HEARTBEAT_FAILURES:
                    return
                continue
            failures = 0
            period = float(reply.get("heartbeatPeriod", period))
            self._learn(reply.get("managers", []))

    async def _probe(self) -> None:
        """Re-check the runtimes; re-register when what works here changed."""
        while True:
            await asyncio.sleep(self.settings.probe_period)
            info = [await r.describe() for r in self.runtimes.values()]
            await self._cleanup_returned(info)
            if info != self.runtime_info:
                log.info("agent.runtimes_changed", runtimes=[r.to_wire() for r in info])
                self.runtime_info = info
                await self.discovery.watch_runtimes(self._available_runtimes())
                return

    # ------------------------------------------------------------ assignments

    async def _assign(self, message: Payload) -> None:
        tasks = [self._unchanged(raw) or Task.from_wire(raw) for raw in message.get("tasks", [])]
        delivered = _delivered_files(message.get("files"))
        if message.get("full"):
            wanted = {t.id for t in tasks}
            for task_id in [t for t in self.runners if t not in wanted]:
                await self._remove(task_id)
            for task_id in [t for t in self.recovered if t not in wanted]:
                runtime, handle = self.recovered.pop(task_id)
                log.info("agent.cleanup_unassigned", task=task_id)
                self._background(
                    _discard(runtime, handle, self.files, self.ports), f"discard-{task_id[:8]}"
                )
        for task in tasks:
            runner = self.runners.get(task.id)
            if runner:
                runner.update(task)
                continue
            runtime_for_task = self.runtimes.get(task.template.runtime)
            recovered = self.recovered.pop(task.id, None)
            if runtime_for_task is None:
                if not task.status.state.terminal:
                    self.reporter.report(
                        task.id,
                        TaskStatus(
                            state=TaskState.REJECTED,
                            message=f"runtime {task.template.runtime!r} is not available here",
                        ),
                    )
                continue
            self.runners[task.id] = TaskRunner(
                task,
                runtime_for_task,
                self.reporter.report,
                self.settings.name,
                recovered[1] if recovered else None,
                on_start=self.metrics.started,
                on_exit=self.metrics.exited,
                files=self.files,
                file_data=_files_of(task, delivered),
                discovery=self.discovery,
                ports=self.ports,
                address=self.advertise_address,
            )
        for task_id in message.get("removed", []):
            await self._remove(str(task_id))

    def _unchanged(self, raw: Any) -> Task | None:
        """The task a runner here already has, if ``raw`` (sent again: a new session's
        full set) says the same of what runners act on, its desired and observed
        states; it is not decoded again (a task's template and node never change)."""
        runner = self.runners.get(str(raw.get("id"))) if isinstance(raw, dict) else None
        if runner is None:
            return None
        task, status = runner.task, raw.get("status")
        if (
            isinstance(status, dict)
            and status.get("state") == task.status.state.value
            and raw.get("desiredState") == task.desired_state.value
        ):
            return task
        return None

    async def _cleanup_returned(self, info: list[RuntimeInfo]) -> None:
        """A runtime that works again: remove what it still has of tasks no runner drives."""
        before = {r.name: r.available for r in self.runtime_info}
        for runtime_info in info:
            if not runtime_info.available or before.get(runtime_info.name, True):
                continue
            runtime = self.runtimes[runtime_info.name]
            with contextlib.suppress(RuntimeBackendError):
                for handle in await runtime.recover():
                    runner = self.runners.get(handle.task_id)
                    if runner is None or runner.done:
                        log.info("agent.cleanup_after_engine_returned", task=handle.task_id)
                        discard = _discard(runtime, handle, self.files, self.ports)
                        self._background(discard, f"discard-{handle.task_id[:8]}")

    async def _remove(self, task_id: str) -> None:
        runner = self.runners.pop(task_id, None)
        if runner:
            self._background(runner.remove(), f"remove-{task_id[:8]}")

    def _background(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run clean-up without holding up the session; keep a reference until done."""
        task = asyncio.create_task(job, name=name)
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    # ------------------------------------------------------------------- logs

    def _start_logs(self, client: Client, message: Payload) -> None:
        subscription = str(message["subscriptionId"])
        runners = [self.runners[t] for t in message.get("taskIds", []) if t in self.runners]
        follow = bool(message.get("follow"))
        tail = message.get("tail")
        since = _since(message.get("since"))
        job = asyncio.create_task(
            client.client_stream(
                "PublishLogs", _log_batches(subscription, runners, follow, tail, since)
            ),
            name=f"logs-{subscription}",
        )
        self._log_jobs[subscription] = job
        job.add_done_callback(lambda _: self._log_jobs.pop(subscription, None))


async def _discard(
    runtime: Runtime, handle: TaskHandle, files: TaskFileStore, ports: PortAllocator
) -> None:
    """Stop and remove a recovered task the manager no longer assigns here."""
    await runtime.stop(handle, "SIGTERM", 10.0)
    await runtime.remove(handle)
    await files.release(handle.task_id)
    ports.release(handle.task_id)


def _delivered_files(raw: Any) -> dict[tuple[str, str], bytes]:
    """The secret and config bytes an assignment message carries (kept in memory only)."""
    found: dict[tuple[str, str], bytes] = {}
    if not isinstance(raw, dict):
        return found
    for kind in ("secret", "config"):
        for name, data in dict(raw.get(f"{kind}s") or {}).items():
            with contextlib.suppress(ValueError, TypeError):
                found[(kind, str(name))] = base64.b64decode(str(data), validate=True)
    return found


def _files_of(task: Task, delivered: dict[tuple[str, str], bytes]) -> dict[tuple[str, str], bytes]:
    wanted = [("secret", r.source) for r in task.template.secrets]
    wanted += [("config", r.source) for r in task.template.configs]
    return {key: delivered[key] for key in wanted if key in delivered}


def _since(raw: Any) -> datetime | None:
    """The ``since`` of a logs request (RFC 3339); None when absent or unreadable."""
    if not isinstance(raw, str):
        return None
    try:
        return parse_time(raw)
    except ValueError:
        return None


async def _log_batches(
    subscription: str,
    runners: list[TaskRunner],
    follow: bool,
    tail: int | None,
    since: datetime | None = None,
) -> AsyncIterator[Payload]:
    """Merge the logs of several tasks into batched PublishLogs messages: each line
    with the time it was written (``timed_logs``; when the runtime cannot tell, the
    time it was read), only those at or after ``since``.

    Following, when every task's runtime marks where its history ends
    (``Runtime.marks_history``), the opening message says ``marksHistory`` and the
    message that carries the last line of every task's history says ``historyEnd``
    (so the manager sorts the whole history, however long the agent takes to send
    it). Both are fields a manager that does not know them ignores."""
    # Bounded: a task that prints faster than the manager takes its lines waits.
    # True: one task's history is all in the queue; None: one task's lines all are.
    queue: asyncio.Queue[dict[str, str] | bool | None] = asyncio.Queue(maxsize=LOG_QUEUE_LIMIT)

    async def pump(runner: TaskRunner) -> None:
        marked = False
        try:
            if runner.handle is not None:
                lines = runner.runtime.timed_logs(
                    runner.handle, follow=follow, tail=tail, since=since
                )
                async for line in lines:
                    if line.history_end:
                        if not marked:
                            await queue.put(True)
                            marked = True
                        continue
                    at = line.time or datetime.now(UTC)
                    if since is None or at >= since:
                        await queue.put(
                            {"taskId": runner.task.id, "line": line.text, "time": format_time(at)}
                        )
        except Exception:
            with contextlib.suppress(asyncio.QueueFull):
                if not marked:
                    queue.put_nowait(True)
                queue.put_nowait(None)
            raise
        if not marked:
            await queue.put(True)
        await queue.put(None)

    marks = follow and all(r.runtime.marks_history for r in runners)
    pumps = [asyncio.create_task(pump(r)) for r in runners]
    remaining = pending = len(pumps)
    try:
        opening: Payload = {"subscriptionId": subscription, "lines": []}
        if marks:
            opening["marksHistory"] = True
            if not pending:
                opening["historyEnd"] = True
        yield opening
        while remaining:
            batch: list[dict[str, str]] = []
            history_end = False
            item = await queue.get()
            while True:
                if item is None:
                    remaining -= 1
                elif isinstance(item, bool):
                    pending -= 1
                    history_end = marks and pending == 0
                else:
                    batch.append(item)
                if history_end or queue.empty() or len(batch) >= 500:
                    break
                item = queue.get_nowait()
            if batch or history_end:
                message: Payload = {"subscriptionId": subscription, "lines": batch}
                if history_end:
                    message["historyEnd"] = True
                yield message
    finally:
        for task in pumps:
            task.cancel()


@dataclass(slots=True)
class _Heard:
    """When the manager last sent anything on the session (loop time: a heartbeat's
    answer, assignments, a status batch's answer, …), and the period it wants."""

    at: float
    period: float


async def _until(stream: AsyncIterable[Payload], stop: asyncio.Task[Any]) -> AsyncIterator[Payload]:
    """Items of ``stream`` until ``stop`` finishes.

    One task reads the stream ahead (a few messages, so gRPC's flow control still
    holds the manager back) for the whole session, instead of racing each message
    against ``stop``: a thousand simulated nodes in one process read a lot of them.
    """
    queue: asyncio.Queue[tuple[Payload | None, BaseException | None]] = asyncio.Queue(
        maxsize=READ_AHEAD
    )

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put((item, None))
        except Exception as exc:  # handed to the reader, raised there
            await queue.put((None, exc))
            return
        await queue.put((None, None))

    def stopped(_: object) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # full: the reader is not waiting
            queue.put_nowait((None, None))

    pumping = asyncio.create_task(pump())
    stop.add_done_callback(stopped)
    try:
        while not stop.done():
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        stop.remove_done_callback(stopped)
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


@contextlib.asynccontextmanager
async def open_agent(settings: AgentSettings) -> AsyncIterator[Agent]:
    agent = Agent(settings)
    try:
        await agent.start()
        yield agent
    finally:
        await agent.aclose()
