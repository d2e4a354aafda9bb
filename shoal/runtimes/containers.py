"""What the ``docker`` and ``podman`` runtimes share.

Both engines are driven through blocking SDKs. An ``Engine`` wraps one SDK: a
handful of blocking calls that speak in engine-neutral terms
(``ContainerConfig`` in, ``ContainerState`` out) and raise shoal's errors, mapped
from the SDK's with ``raise ... from exc``. ``ContainerRuntime`` implements the
runtime interface once on top of an ``Engine``, running every call in a bounded
thread pool (``threads`` runtime option, default 16) so the event loop never
blocks and the engine is never flooded.

Labels and ownership
    Every container carries ``io.shoal.task-id``, ``io.shoal.service``,
    ``io.shoal.slot`` and ``io.shoal.node``. ``recover`` lists only containers
    whose node label is this agent's node name, so an agent never touches
    containers it did not create, nor another agent's on a shared engine.
    The handle holds the container id; nothing is kept on disk.

Waiting without a thread per task
    One background thread follows the engine's event stream (filtered on this
    node's label) and wakes the waiters of a container when anything happens to
    it; ``wait`` re-inspects then. A waiter also re-inspects every few seconds
    (every half second while the event stream is down), so a lost event only
    delays an exit, never hides it. Following logs uses a thread of its own per
    follower, outside the pool, because it blocks for as long as the task runs.

Images
    ``imagePullPolicy``: ``ifNotPresent`` (default) pulls only a missing image,
    ``never`` never pulls, ``always`` pulls on every start. An image that is
    missing and cannot be pulled rejects the task (``TaskRejectedError``) with
    the engine's reason, rather than failing it into a restart loop.

Exit status
    The engine's exit code; ``128+N`` is reported as death by signal N (the
    same convention as the process runtime). ``OOMKilled`` says so in the
    message and in ``ExitStatus.oom_killed``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
import signal as signals
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests.exceptions
import structlog

from shoal.errors import RuntimeBackendError, RuntimeUnavailableError, TaskRejectedError
from shoal.logtimes import split_stamp
from shoal.models import RuntimeInfo, TaskTemplate
from shoal.models.container import Device, Mount, PortMapping
from shoal.models.units import format_size
from shoal.runtimes.base import (
    ExecResult,
    ExitStatus,
    LogLine,
    Observation,
    Runtime,
    RuntimeSettings,
    TaskHandle,
    TaskLaunch,
)

log = structlog.get_logger(__name__)

LABEL_TASK = "io.shoal.task-id"
LABEL_SERVICE = "io.shoal.service"
LABEL_SLOT = "io.shoal.slot"
LABEL_NODE = "io.shoal.node"
# Set by ``shoal stack deploy`` on a stack's containers (shoal.compose.convert.STACK_LABEL).
LABEL_STACK = "shoal.stack"
RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")

T = TypeVar("T")

# Output chunks of one ``shoal exec`` waiting for the agent to send them.
EXEC_QUEUE_LIMIT = 256
_POLL_WITH_EVENTS = 5.0
_POLL_WITHOUT_EVENTS = 0.5
_STOP_POLL = 0.05
_KILL_TIMEOUT = 10.0
_IMAGE_CACHE_SECONDS = 30.0
# How long to wait before believing that a SIGKILLed container was not OOM-killed.
_OOM_SETTLE = 0.5
# How long the state seen at start stands in for an inspect (while events flow).
_FRESH = 1.0
# A container younger than this when stopped gets its stop signal a second time.
_SETTLE = 1.0


@contextlib.contextmanager
def engine_errors(
    description: str,
    what: str,
    api_error: type[Exception],
    sdk_error: type[Exception],
    explain: Callable[[BaseException], str],
) -> Iterator[None]:
    """An engine SDK's errors → shoal's: unreachable, or ``what`` failed and why.

    ``api_error`` is the SDK's answer-from-the-engine error (``explain`` reads
    the engine's message out of it), ``sdk_error`` the base of all its others.
    """
    try:
        yield
    except requests.exceptions.ConnectionError as exc:
        raise RuntimeUnavailableError(f"cannot reach {description}: {exc}") from exc
    except api_error as exc:
        raise RuntimeBackendError(f"{what}: {explain(exc)}") from exc
    except (sdk_error, requests.exceptions.RequestException) as exc:
        raise RuntimeBackendError(f"{what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """Everything an engine needs to create one container, engine-neutral."""

    name: str
    image: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    env: dict[str, str]
    workdir: str | None
    user: str | None
    labels: dict[str, str]
    ports: list[PortMapping]
    mounts: list[Mount]
    nano_cpus: int | None
    memory: int | None
    pids: int | None
    cap_add: list[str]
    cap_drop: list[str]
    sysctls: dict[str, str]
    privileged: bool
    devices: list[Device]
    init: bool
    stop_signal: str
    # name → (soft, hard); -1 is unlimited.
    ulimits: dict[str, tuple[int, int]]
    read_only: bool
    log_max_bytes: int
    log_files: int
    # The node's DNS listener on the engine network and the search domains
    # (shoal.agent.discovery); empty: the engine's defaults.
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What an engine's inspect says, engine-neutral."""

    id: str
    status: str  # created, running, paused, restarting, exited, dead, ...
    running: bool
    pid: int | None
    exit_code: int | None
    oom_killed: bool
    error: str
    started_at: datetime | None
    labels: dict[str, str] = field(default_factory=dict)
    address: str | None = None
    memory_limit: int | None = None


class Engine(abc.ABC):
    """Blocking calls into one engine SDK; every method raises shoal's errors."""

    #: For messages: "the Docker engine at unix:///var/run/docker.sock".
    description: str

    @abc.abstractmethod
    def ping(self) -> str:
        """The engine's version; raises ``RuntimeUnavailableError`` when unreachable."""

    @abc.abstractmethod
    def image_present(self, image: str) -> bool: ...

    @abc.abstractmethod
    def pull(self, image: str) -> None:
        """Raises ``TaskRejectedError`` when the image cannot be had."""

    @abc.abstractmethod
    def create(self, config: ContainerConfig) -> str:
        """Create (not start) the container; returns its id."""

    @abc.abstractmethod
    def start(self, container_id: str) -> None:
        """Raises ``TaskRejectedError`` when the container can never start as configured."""

    @abc.abstractmethod
    def inspect(self, container_id: str) -> ContainerState | None:
        """``None`` when there is no such container."""

    @abc.abstractmethod
    def kill(self, container_id: str, signal: str) -> None:
        """Signal the container; a container that is not running is not an error."""

    @abc.abstractmethod
    def remove(self, container_id: str) -> None:
        """Force-remove with its anonymous volumes; a missing container is not an error."""

    @abc.abstractmethod
    def list_ids(self, labels: dict[str, str]) -> list[str]:
        """Ids of every container, running or not, that has all ``labels``."""

    @abc.abstractmethod
    def logs(
        self, container_id: str, follow: bool, tail: int | None, since: int | None = None
    ) -> Iterator[bytes]:
        """Raw output chunks (stdout and stderr, demultiplexed), each line prefixed with
        the engine's RFC 3339 time and a space; from ``since`` (Unix seconds) on; empty
        when gone."""

    @abc.abstractmethod
    def exec(self, container_id: str, command: list[str]) -> ExecResult: ...

    @abc.abstractmethod
    def exec_stream(
        self, container_id: str, command: list[str]
    ) -> Iterator[tuple[str, bytes] | int]:
        """Run ``command`` in the container: ``(stream, bytes)`` chunks, then the exit code."""

    @abc.abstractmethod
    def events(self, labels: dict[str, str]) -> Iterator[str]:
        """Ids of containers with ``labels`` as they exit or go away; blocks."""

    def gateway(self) -> str | None:
        """The host's address on the network containers are started on (its gateway)."""
        return None

    def subnets(self) -> list[str]:
        """The subnets of the network containers are started on (CIDR)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


def container_name(launch: TaskLaunch, node: str) -> str:
    """``shoal-SERVICE.SLOT.TASK.NODE``: unique on an engine that several agents share."""
    raw = f"shoal-{launch.service}.{launch.slot}.{launch.task_id}.{node}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw)


def dns_search(template: TaskTemplate, host: list[str]) -> list[str]:
    """``<stack>.shoal`` (bare names of the stack's services), ``shoal``, then the host's."""
    stack = template.labels.get(LABEL_STACK)
    ours = [f"{stack}.shoal", "shoal"] if stack else ["shoal"]
    return ours + [domain for domain in host if domain not in ours]


def host_search(path: Path = RESOLV_CONF) -> list[str]:
    """The host's search domains, which containers keep after shoal's own."""
    for candidate in (path, SYSTEMD_RESOLV_CONF):
        try:
            lines = candidate.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if words and words[0] in ("search", "domain"):
                return [w.rstrip(".") for w in words[1:] if w != "."]
    return []


def container_config(
    launch: TaskLaunch, settings: RuntimeSettings, dns_server: str | None = None
) -> ContainerConfig:
    template: TaskTemplate = launch.template
    if template.image is None:  # the models refuse this at apply time
        raise TaskRejectedError("a container task needs an image")
    search = host_search() if dns_server else []
    limits = template.resources.limits
    labels = {
        **template.labels,
        LABEL_TASK: launch.task_id,
        LABEL_SERVICE: launch.service,
        LABEL_SLOT: str(launch.slot),
        LABEL_NODE: settings.node_name,
    }
    return ContainerConfig(
        name=container_name(launch, settings.node_name),
        image=template.image,
        entrypoint=list(template.command) or None,
        cmd=list(template.args) or None,
        env={**template.env, **launch.env},
        workdir=template.workdir,
        user=template.user,
        labels=labels,
        ports=[
            PortMapping(name=p.name, target=p.target, published=p.port, protocol=p.protocol)
            for p in launch.ports
        ]
        or list(template.ports),
        mounts=list(template.mounts)
        + [
            Mount(type="bind", source=source, target=target, read_only=True)
            for target, source in launch.file_mounts
        ],
        nano_cpus=None if limits is None or limits.cpus is None else int(limits.cpus * 1e9),
        memory=None if limits is None else limits.memory,
        pids=None if limits is None else limits.pids,
        cap_add=list(template.cap_add),
        cap_drop=list(template.cap_drop),
        sysctls=dict(template.sysctls),
        privileged=template.privileged,
        devices=list(template.devices),
        init=template.init,
        stop_signal=template.stop_signal,
        ulimits={name: (u.soft, u.hard) for name, u in template.ulimits.items()},
        read_only=template.read_only,
        log_max_bytes=settings.log_max_bytes,
        log_files=settings.log_files,
        # Only shoal's listener, which relays other names (``shoal.discovery.forward``).
        dns=[dns_server] if dns_server else [],
        dns_search=dns_search(template, search) if dns_server else [],
    )


def exit_status(state: ContainerState) -> ExitStatus:
    """The ``ExitStatus`` of a container that is not running."""
    code = state.exit_code
    if state.status == "created":
        return ExitStatus(exit_code=None, message="the container never started")
    if state.oom_killed:
        limit = f" (limit {format_size(state.memory_limit)})" if state.memory_limit else ""
        return ExitStatus(
            exit_code=code,
            signal=signals.SIGKILL if code == 137 else None,
            message=f"killed by the OOM killer: out of memory{limit}",
            oom_killed=True,
        )
    if code is None:
        return ExitStatus(exit_code=None, message=state.error or "exit status unknown")
    if 128 < code < 128 + signals.NSIG:
        number = code - 128
        try:
            name = signals.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return ExitStatus(exit_code=code, signal=number, message=f"killed by {name}")
    message = f"exited with code {code}"
    if state.error:
        message += f": {state.error}"
    return ExitStatus(exit_code=code, message=message)


def _age(started_at: datetime | None) -> float | None:
    if started_at is None:
        return None
    return (datetime.now(UTC) - started_at).total_seconds()


# Event actions after which a waiter looks again (Docker's and Podman's names).
WAKE_ACTIONS = frozenset({"die", "died", "oom", "stop", "kill", "destroy", "remove", "cleanup"})


def _stamped(line: str, since: datetime | None) -> LogLine | None:
    """The engine's ``TIMESTAMP SP line`` as a ``LogLine``; None when before ``since``."""
    at, text = split_stamp(line)
    if since is not None and at is not None and at < since:
        return None
    return LogLine(text, at)


def split_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Whole lines from raw chunks; a last line without newline counts."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if pending:
        yield pending.decode(errors="replace")


class ContainerRuntime(Runtime):
    """The runtime interface over an ``Engine``; see the module docstring."""

    #: "Docker", "Podman": for messages.
    engine_name: str
    container_fields = True

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        threads = int(settings.options.get("threads", "16"))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{self.name}-")
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._events_ok = False
        self._events_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._images: dict[str, float] = {}
        # What start saw right after starting, used by the inspect that follows
        # (not by later ones): saves the engine one call per task. Any event of
        # the container, a stop or a remove drops it.
        self._fresh: dict[str, tuple[float, ContainerState]] = {}
        self._image_locks: dict[str, asyncio.Lock] = {}
        self._dns_server: str | None = None

    @abc.abstractmethod
    def make_engine(self, threads: int) -> Engine:
        """Build the engine client (blocking; must not need the engine to be up)."""

    # -- plumbing ------------------------------------------------------------

    def _engine_now(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = self.make_engine(self._pool._max_workers)
            return self._engine

    async def _call(self, fn: Callable[[Engine], T]) -> T:
        self._ensure_events()
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(self._engine_now())
        )

    @staticmethod
    def _container_id(handle: TaskHandle) -> str:
        try:
            return str(handle.data["containerId"])
        except (KeyError, TypeError) as exc:
            raise RuntimeBackendError(f"malformed container handle for {handle.task_id}") from exc

    def _handle(self, task_id: str, container_id: str) -> TaskHandle:
        return TaskHandle(task_id=task_id, runtime=self.name, data={"containerId": container_id})

    def _ensure_events(self) -> None:
        """Start the event follower once, from the event loop."""
        if self._events_thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._events_thread = threading.Thread(
            target=self._follow_events, name=f"{self.name}-events", daemon=True
        )
        self._events_thread.start()

    def _follow_events(self) -> None:
        delay = 0.2
        labels = {LABEL_NODE: self.settings.node_name}
        while not self._closed.is_set():
            try:
                stream = self._engine_now().events(labels)
                self._events_ok = True
                delay = 0.2
                for container_id in stream:
                    if self._closed.is_set():
                        return
                    self._wake(container_id)
            except Exception as exc:  # any SDK or connection failure: retry
                log.debug("runtime.events_lost", runtime=self.name, error=str(exc))
            self._events_ok = False
            self._wake_all()
            self._closed.wait(delay)
            delay = min(delay * 2, 5.0)

    def _wake(self, container_id: str) -> None:
        self._fresh.pop(container_id, None)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for key in (container_id, container_id[:12]):
            for event in list(self._waiters.get(key, ())):
                loop.call_soon_threadsafe(event.set)

    def _wake_all(self) -> None:
        self._fresh.clear()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for waiters in list(self._waiters.values()):
            for event in list(waiters):
                loop.call_soon_threadsafe(event.set)

    async def _changed(self, container_id: str, timeout: float) -> None:
        """Return when the events say ``container_id`` changed, or after ``timeout``."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(container_id, set())
        waiters.add(event)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(container_id, None)

    async def _state(self, handle: TaskHandle) -> ContainerState | None:
        container_id = self._container_id(handle)
        return await self._call(lambda e: e.inspect(container_id))

    # -- the runtime interface ----------------------------------------------

    async def describe(self) -> RuntimeInfo:
        try:
            version = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: self._engine_now().ping()
            )
        except Exception as exc:  # describe must not raise
            return RuntimeInfo(name=self.name, available=False, message=str(exc))
        return RuntimeInfo(
            name=self.name, available=True, message=f"{self.engine_name} {version} reachable"
        )

    async def start(self, launch: TaskLaunch) -> TaskHandle:
        config = container_config(launch, self.settings, self._dns_server)
        await self._ensure_image(config.image, launch.template.image_pull_policy or "ifNotPresent")
        container_id, state = await self._call(lambda e: _create_and_start(e, config))
        if state is not None and self._events_ok:
            self._fresh[container_id] = (time.monotonic(), state)
        log.info("task started", task_id=launch.task_id, container=container_id[:12])
        return self._handle(launch.task_id, container_id)

    async def _ensure_image(self, image: str, policy: str) -> None:
        if policy == "always":
            await self._call(lambda e: e.pull(image))
            return
        # One check per image at a time: 50 replicas starting together ask once.
        async with self._image_locks.setdefault(image, asyncio.Lock()):
            seen = self._images.get(image)
            if seen is not None and time.monotonic() - seen < _IMAGE_CACHE_SECONDS:
                return
            if not await self._call(lambda e: e.image_present(image)):
                if policy == "never":
                    raise TaskRejectedError(
                        f"image {image!r} is not present on this node and imagePullPolicy is never"
                    )
                await self._call(lambda e: e.pull(image))
            self._images[image] = time.monotonic()

    async def inspect(self, handle: TaskHandle) -> Observation:
        fresh = self._fresh.get(self._container_id(handle))
        if fresh is not None and time.monotonic() - fresh[0] < _FRESH and self._events_ok:
            state: ContainerState | None = fresh[1]
        else:
            state = await self._state(handle)
        if state is None:
            return Observation(
                running=False,
                exit=ExitStatus(exit_code=None, message="the container was removed"),
            )
        if state.running:
            return Observation(running=True, pid=state.pid, started_at=state.started_at)
        return Observation(
            running=False, pid=state.pid, started_at=state.started_at, exit=exit_status(state)
        )

    async def wait(self, handle: TaskHandle) -> ExitStatus:
        container_id = self._container_id(handle)
        # Never the state seen at start: an exit right after it must not wait for a poll.
        self._fresh.pop(container_id, None)
        while True:
            observation = await self.inspect(handle)
            exit = observation.exit
            if exit is not None and exit.exit_code == 137 and not exit.oom_killed:
                # Docker may record an OOM kill a moment after the container died.
                await asyncio.sleep(_OOM_SETTLE)
                exit = (await self.inspect(handle)).exit or exit
            if exit is not None:
                return exit
            timeout = _POLL_WITH_EVENTS if self._events_ok else _POLL_WITHOUT_EVENTS
            await self._changed(container_id, timeout)

    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None:
        container_id = self._container_id(handle)
        self._fresh.pop(container_id, None)
        state = await self._call(lambda e: e.inspect(container_id))
        if state is None or not state.running:
            return
        if signal.upper() not in ("SIGKILL", "KILL", "9") and grace > 0:
            await self._call(lambda e: e.kill(container_id, signal))
            deadline = time.monotonic() + grace
            # A container that has only just started may not have installed its
            # handlers yet (an init as pid 1 ignores what it does not handle):
            # one more signal once it is a second old closes that race.
            age = _age(state.started_at)
            if age is not None and age < _SETTLE:
                settle = min(_SETTLE - age, grace)
                if await self._stopped_within(container_id, settle):
                    return
                await self._call(lambda e: e.kill(container_id, signal))
            if await self._stopped_within(container_id, max(deadline - time.monotonic(), 0)):
                return
        await self._call(lambda e: e.kill(container_id, "SIGKILL"))
        if not await self._stopped_within(container_id, _KILL_TIMEOUT):
            raise RuntimeBackendError(
                f"container {container_id[:12]} still runs {_KILL_TIMEOUT:.0f}s after SIGKILL"
            )

    async def _stopped_within(self, container_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            state = await self._call(lambda e: e.inspect(container_id))
            if state is None or not state.running:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._changed(container_id, min(left, _STOP_POLL * 4))

    async def remove(self, handle: TaskHandle) -> None:
        container_id = self._container_id(handle)
        self._fresh.pop(container_id, None)
        await self._call(lambda e: e.remove(container_id))

    async def timed_logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine]:
        """Times from the engine's own stamps; ``since`` goes to the engine (whole
        seconds) and is applied exactly here."""
        after = None if since is None else int(since.timestamp())
        container_id = self._container_id(handle)
        if tail is not None and tail <= 0 and not follow:
            return
        if not follow:
            lines = await self._call(
                lambda e: list(split_lines(e.logs(container_id, False, tail, after)))
            )
            for line in lines:
                if (stamped := _stamped(line, since)) is not None:
                    yield stamped
            return
        # Following blocks for the task's lifetime: a thread of its own, not the pool's.
        self._ensure_events()
        engine = await asyncio.get_running_loop().run_in_executor(self._pool, self._engine_now)
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def pump() -> None:
            try:
                for line in split_lines(engine.logs(container_id, True, tail, after)):
                    if cancelled.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, line)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=pump, name=f"{self.name}-logs", daemon=True).start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if (stamped := _stamped(item, since)) is not None:
                    yield stamped
        finally:
            cancelled.set()

    async def recover(self) -> list[TaskHandle]:
        labels = {LABEL_NODE: self.settings.node_name}
        handles = []
        for container_id in await self._call(lambda e: e.list_ids(labels)):
            state = await self._state(self._handle("?", container_id))
            if state is None or state.labels.get(LABEL_NODE) != self.settings.node_name:
                continue
            task_id = state.labels.get(LABEL_TASK)
            if task_id:
                handles.append(self._handle(task_id, state.id))
        return handles

    async def exec(self, handle: TaskHandle, command: list[str], timeout: float) -> ExecResult:
        container_id = self._container_id(handle)
        async with asyncio.timeout(timeout):
            return await self._call(lambda e: e.exec(container_id, command))

    async def exec_stream(
        self, handle: TaskHandle, command: list[str]
    ) -> AsyncIterator[tuple[str, bytes] | int]:
        container_id = self._container_id(handle)
        # The command may run for long: a thread of its own, not the pool's.
        self._ensure_events()
        engine = await asyncio.get_running_loop().run_in_executor(self._pool, self._engine_now)
        loop = asyncio.get_running_loop()
        # Bounded: a command that writes faster than the caller reads waits for it.
        queue: asyncio.Queue[tuple[str, bytes] | int | BaseException | None] = asyncio.Queue(
            maxsize=EXEC_QUEUE_LIMIT
        )
        cancelled = threading.Event()

        def put(item: tuple[str, bytes] | int | BaseException | None) -> None:
            while not cancelled.is_set():
                future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
                try:
                    future.result(timeout=1.0)
                    return
                except TimeoutError:
                    future.cancel()
                except RuntimeError:  # the loop is gone
                    return

        def pump() -> None:
            try:
                for item in engine.exec_stream(container_id, command):
                    if cancelled.is_set():
                        return
                    put(item)
            except BaseException as exc:
                put(exc)
            finally:
                put(None)

        threading.Thread(target=pump, name=f"{self.name}-exec", daemon=True).start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    async def probe_host(self, handle: TaskHandle) -> str:
        state = await self._state(handle)
        if state is None or not state.address:
            raise RuntimeBackendError(f"container of task {handle.task_id} has no address")
        return state.address

    async def dns_gateway(self) -> str | None:
        return await self._call(lambda e: e.gateway())

    async def dns_subnets(self) -> list[str]:
        return await self._call(lambda e: e.subnets())

    def use_dns(self, server: str) -> None:
        self._dns_server = server

    @property
    def dns_server(self) -> str | None:
        """The name server containers started now get first (``use_dns``), if any."""
        return self._dns_server

    async def signal(self, handle: TaskHandle, signal: str) -> None:
        container_id = self._container_id(handle)
        await self._call(lambda e: e.kill(container_id, signal))

    async def aclose(self) -> None:
        self._closed.set()
        engine = self._engine
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, engine.close)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _create_and_start(engine: Engine, config: ContainerConfig) -> tuple[str, ContainerState | None]:
    """Create, start and inspect in one trip to the pool; remove what failed to start."""
    container_id = engine.create(config)
    try:
        engine.start(container_id)
    except RuntimeBackendError:
        with contextlib.suppress(RuntimeBackendError):
            engine.remove(container_id)
        raise
    return container_id, engine.inspect(container_id)


def parse_time(raw: Any) -> datetime | None:
    """Engine timestamps (RFC 3339 with nanoseconds) → aware datetime; zero → None."""
    if not raw or not isinstance(raw, str) or raw.startswith("0001-"):
        return None
    text = raw.replace("Z", "+00:00")
    # Python's fromisoformat takes at most microseconds.
    match = re.match(r"^([^.]*)\.(\d+)(.*)$", text)
    if match:
        text = f"{match.group(1)}.{match.group(2)[:6]}{match.group(3)}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def state_from_attrs(attrs: dict[str, Any]) -> ContainerState:
    """``ContainerState`` from an inspect document (Docker's and Podman's share this shape)."""
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = (attrs.get("NetworkSettings") or {}).get("IPAddress") or None
    for network in networks.values():
        if not address and network and network.get("IPAddress"):
            address = network["IPAddress"]
    host_config = attrs.get("HostConfig") or {}
    status = str(state.get("Status", "")).lower()
    running = bool(state.get("Running")) and status not in ("exited", "dead")
    pid = state.get("Pid") or None
    exit_code = None if running else state.get("ExitCode")
    return ContainerState(
        id=str(attrs.get("Id", "")),
        status=status,
        running=running,
        pid=int(pid) if pid else None,
        exit_code=int(exit_code) if exit_code is not None else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=str(state.get("Error") or ""),
        started_at=parse_time(state.get("StartedAt")),
        labels=dict(config.get("Labels") or {}),
        address=address,
        memory_limit=int(host_config.get("Memory") or 0) or None,
    )


def start_rejection(message: str) -> bool:
    """Whether an engine's start error means the task can never start as configured."""
    lowered = message.lower()
    return any(
        needle in lowered
        for needle in (
            "executable file not found",
            "no such file or directory",
            "permission denied",
            "not a directory",
            "unable to find user",
            "no matching entries in passwd",
            "invalid argument",
            "error gathering device information",
            "operation not permitted",
        )
    )
