"""Events: what the control plane did and why, kept in the store for every manager.

An event names an object (``service/web``, ``node/n1``, ``task/web.1.ab12cd34``,
``sync/prod``, ``cluster``), a CamelCase reason, a message, a type (Normal or
Warning) and, where one applies, the service and node it concerns, so
``shoal events --service web`` shows the service's own events and its tasks'.

Where they live
    Each event is one key ``/events/<time-ns>-<random>`` (JSON). Every manager
    follows that prefix with a store watch into a bounded cache, so every
    manager answers the same history, a new leader included, and ``watch``
    streams what is written after a cursor (the store revision of the last
    event a client saw). Any manager may record (a follower refuses a call, the
    leader's controllers act); the writes are not fenced: an event is a
    diagnostic record, not state any controller acts on.

Bounded, and never the load that slows a reconcile
    ``record`` never waits: it appends to a pending buffer that one background
    flusher writes every ``flush_interval`` seconds, at most ``flush_batch``
    events per pass, in transactions within the store's limits. A repeat of an
    object's last event (same reason and message) updates that event (its
    ``count`` and ``time``) instead of adding one. When the buffer is full, new
    events are folded into one summary per (service or object, reason) with
    their count (``shoal_events_aggregated_total``); when even the summaries
    overflow, or the store refused an event on its own (too large for it: a
    message is cut at ``MAX_MESSAGE`` characters first), events are dropped
    and counted (``shoal_events_dropped_total``); an unreachable store keeps
    them pending. The leader trims: events beyond ``limit``
    (oldest first) or older than ``ttl``, at most ``flush_batch`` deletions a
    pass, so an apply of 10,000 tasks costs the store a few transactions per
    second of events, however many happen.

Without a store (``EventRecorder()``, the controllers' unit tests), events are
kept in the same bounded cache in memory only. Every event is also logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import CompactedError, StoreError, StoreUnavailableError
from shoal.models.node import Node
from shoal.models.task import Task, TaskState
from shoal.store.base import Delete, EventType, KeyValue, Op, Put, Store

log = structlog.get_logger("shoal.events")

PREFIX = "/events/"
# Longer messages are cut (a Sync's problems, a reconcile error's text).
MAX_MESSAGE = 4096
NORMAL = "Normal"
WARNING = "Warning"
TYPES = (NORMAL, WARNING)


@dataclass(frozen=True, slots=True)
class EventSettings:
    """How many events are kept and how they are written (``shoal manager --event-*``)."""

    limit: int = 10_000
    ttl: float = 3600.0
    flush_interval: float = 1.0
    flush_batch: int = 128
    max_pending: int = 2048
    max_summaries: int = 512


@dataclass(frozen=True, slots=True)
class Event:
    time: datetime  # the last occurrence
    object: str  # "service/web", "node/n1", "task/web.1.ab12cd34", "cluster"
    reason: str  # CamelCase, e.g. "TaskFailed", "NodeDown"
    message: str
    warning: bool = False
    service: str | None = None
    node: str | None = None
    count: int = 1
    first_time: datetime | None = None
    # The store key's suffix (time-ordered) and the revision it was last written at.
    id: str = ""
    cursor: int = 0

    @property
    def type(self) -> str:
        return WARNING if self.warning else NORMAL

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "time": self.time.isoformat(),
            "object": self.object,
            "reason": self.reason,
            "message": self.message,
            "type": self.type,
            "count": self.count,
            "firstTime": (self.first_time or self.time).isoformat(),
            "cursor": self.cursor,
            "id": self.id,
        }
        if self.service:
            wire["service"] = self.service
        if self.node:
            wire["node"] = self.node
        return wire

    def to_store(self) -> bytes:
        wire = self.to_wire()
        del wire["cursor"], wire["id"]
        return orjson.dumps(wire)

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Event:
        wire = orjson.loads(kv.value)
        return cls(
            time=datetime.fromisoformat(wire["time"]),
            object=str(wire["object"]),
            reason=str(wire["reason"]),
            message=str(wire["message"]),
            warning=wire.get("type") == WARNING,
            service=wire.get("service"),
            node=wire.get("node"),
            count=int(wire.get("count", 1)),
            first_time=datetime.fromisoformat(wire["firstTime"]) if "firstTime" in wire else None,
            id=kv.key.removeprefix(PREFIX),
            cursor=kv.mod_revision,
        )


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a query or a watch wants; ``None`` fields match everything."""

    service: str | None = None
    node: str | None = None
    type: str | None = None
    object: str | None = None
    since: datetime | None = None

    @classmethod
    def from_wire(cls, request: dict[str, Any], now: datetime) -> EventFilter:
        """The filter a Control request names (``ValueError`` naming a bad field)."""
        kind = request.get("type")
        if kind is not None and kind not in TYPES:
            raise ValueError(f"type: must be Normal or Warning (got {kind!r})")
        since = request.get("sinceSeconds")
        if since is not None and (not isinstance(since, int | float) or since < 0):
            raise ValueError(f"sinceSeconds: must be a number of seconds >= 0 (got {since!r})")
        for name in ("service", "node", "object"):
            if request.get(name) is not None and not isinstance(request[name], str):
                raise ValueError(f"{name}: must be a string")
        return cls(
            service=request.get("service"),
            node=request.get("node"),
            type=kind,
            object=request.get("object"),
            since=now - timedelta(seconds=since) if since is not None else None,
        )

    def matches(self, event: Event) -> bool:
        if self.service is not None and event.service != self.service:
            return False
        if self.node is not None and event.node != self.node:
            return False
        if self.type is not None and event.type != self.type:
            return False
        if self.object is not None and event.object != self.object:
            return False
        return self.since is None or event.time >= self.since


def _scope(obj: str) -> tuple[str | None, str | None]:
    """The service and node an object names by itself."""
    kind, _, name = obj.partition("/")
    if kind == "service":
        return name, None
    if kind == "node":
        return None, name
    return None, None


@dataclass(slots=True)
class _Summary:
    """Events folded together while busy; made an ``Event`` when there is room."""

    first: Event
    count: int
    time: datetime
    last: str  # "object: message" of the newest

    def event(self) -> Event:
        return replace(
            self.first,
            time=self.time,
            count=self.count,
            message=f"{self.count} events like this one while busy; last: {self.last}",
        )


@dataclass(slots=True)
class _Counts:
    recorded: int = 0
    aggregated: int = 0
    dropped: int = 0
    written: int = 0
    trimmed: int = 0
    summaries: dict[tuple[str, str, bool], _Summary] = field(default_factory=dict)


class EventRecorder:
    """The event log described above."""

    def __init__(self, settings: EventSettings | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings or EventSettings()
        self.clock = clock
        self.store: Store | None = None
        # Events in the store (or, without one, recorded here), oldest write first.
        self._cache: OrderedDict[str, Event] = OrderedDict()
        # Recorded, not yet written (by id: a repeat overwrites its pending write).
        self._pending: OrderedDict[str, Event] = OrderedDict()
        # Each object's last event id, so a repeat updates it.
        self._last: dict[str, str] = {}
        self._counts = _Counts()
        self._watchers: set[asyncio.Queue[Event | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._trims: Callable[[], bool] = lambda: True
        self.revision = 0  # the store revision the cache reflects
        self._sequence = 0
        self._instance = secrets.token_hex(3)

    # ------------------------------------------------------------ recording

    def record(
        self,
        obj: str,
        reason: str,
        message: str,
        warning: bool = False,
        *,
        service: str | None = None,
        node: str | None = None,
        quiet: bool = False,
        update: bool = False,
    ) -> None:
        """Note an event; never waits and never raises. ``quiet``: log it at debug level
        only (task state changes: ``shoal events`` shows them, the log need not).
        ``update``: the message says what holds now (``12 tasks pending: …``): when the
        object's last event has this reason, that event takes the new message (and
        counts one more) instead of a new event being added; only a new one is logged."""
        if len(message) > MAX_MESSAGE:  # one event must always fit a store write
            cut = len(message) - MAX_MESSAGE
            message = f"{message[:MAX_MESSAGE]}… ({cut} more characters)"
        last = self._newest(self._last.get(obj, ""))
        repeat = last is not None and last.reason == reason and (update or last.message == message)
        if not (repeat and update):
            (log.warning if warning else log.debug if quiet else log.info)(
                reason, object=obj, message=message
            )
        self._counts.recorded += 1
        own_service, own_node = _scope(obj)
        now = self.clock.now()
        if last is not None and repeat:
            event = replace(last, time=now, count=last.count + 1, warning=warning, message=message)
        elif self.store is not None and len(self._pending) >= self.settings.max_pending:
            self._aggregate(obj, reason, message, warning, service or own_service, now)
            return
        else:
            event = Event(
                time=now,
                object=obj,
                reason=reason,
                message=message,
                warning=warning,
                service=service or own_service,
                node=node or own_node,
                first_time=now,
                id=self._new_id(now),
            )
        if self.store is None:
            self._cache[event.id] = event
            self._cache.move_to_end(event.id)
            self._last[obj] = event.id
            self._trim_local()
            return
        if event.id not in self._pending and len(self._pending) >= self.settings.max_pending:
            # A repeat of an event already written, while busy: folded like the others.
            self._aggregate(obj, reason, message, warning, event.service, now)
            return
        self._pending[event.id] = event
        self._last[obj] = event.id
        if len(self._pending) >= self.settings.flush_batch:
            self._wake.set()

    def _new_id(self, now: datetime) -> str:
        """Time-ordered, in recording order within this manager, unique across managers."""
        self._sequence += 1
        return f"{int(now.timestamp() * 1e9):020d}-{self._sequence:08x}-{self._instance}"

    def refused(self, method: str, reason: str, request: Any = None) -> None:
        """A call the manager refused for who made it (``Authorizer(denied=...)``)."""
        self.record(f"call/{method}", "PermissionDenied", reason, warning=True)

    def _newest(self, event_id: str) -> Event | None:
        return self._pending.get(event_id) or self._cache.get(event_id)

    def _aggregate(
        self,
        obj: str,
        reason: str,
        message: str,
        warning: bool,
        service: str | None,
        now: datetime,
    ) -> None:
        """Fold one more event into its summary: a dict update, no new objects."""
        counts = self._counts
        scope = f"service/{service}" if service else obj
        key = (scope, reason, warning)
        summary = counts.summaries.get(key)
        if summary is None:
            if len(counts.summaries) >= self.settings.max_summaries:
                counts.dropped += 1
                return
            first = Event(
                time=now,
                object=scope,
                reason=reason,
                message="",
                warning=warning,
                service=service,
                first_time=now,
                id=self._new_id(now),
            )
            summary = counts.summaries[key] = _Summary(first, 0, now, "")
        counts.aggregated += 1
        summary.count += 1
        summary.time = now
        summary.last = f"{obj}: {message}"

    # --------------------------------------------------------------- reading

    def events(self, selector: EventFilter | None = None, limit: int | None = None) -> list[Event]:
        """Kept events, oldest first (recorded but not yet written ones last)."""
        selector = selector or EventFilter()
        found = [e for e in self._cache.values() if e.id not in self._pending]
        found.extend(self._pending.values())
        found = [e for e in found if selector.matches(e)]
        return found[-limit:] if limit else found

    def for_object(self, obj: str) -> list[Event]:
        return self.events(EventFilter(object=obj))

    def forget(self, obj: str) -> None:
        """Kept for callers of the in-memory recorder; stored events age out instead."""
        self._last.pop(obj, None)

    async def watch(self, cursor: int, selector: EventFilter) -> AsyncIterator[Event]:
        """Events written after ``cursor`` (a store revision), then each new one as written.

        Ends (returns) if this watcher fell more than ``max_pending`` events behind:
        the caller lists again from its last cursor.
        """
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self.settings.max_pending)
        self._watchers.add(queue)
        # One transaction writes several events at one revision: the cursor moves per
        # revision, and the events already sent at the newest one are remembered.
        sent: set[str] = set()

        def fresh(event: Event) -> bool:
            nonlocal cursor
            if event.cursor < cursor or (event.cursor == cursor and event.id in sent):
                return False
            if event.cursor > cursor:
                cursor = event.cursor
                sent.clear()
            sent.add(event.id)
            return True

        try:
            cursor += 1  # strictly after the caller's cursor
            for event in sorted(self._cache.values(), key=lambda e: (e.cursor, e.id)):
                if fresh(event) and selector.matches(event):
                    yield event
            while True:
                new = await queue.get()
                if new is None:
                    return
                if fresh(new) and selector.matches(new):
                    yield new
        finally:
            self._watchers.discard(queue)

    def _publish(self, event: Event) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._watchers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    # ---------------------------------------------------------------- store

    async def start(self, store: Store, trims: Callable[[], bool] = lambda: True) -> None:
        """Keep events in ``store``: list them, follow them, flush and trim in the background.

        ``trims``: whether this manager trims now (the leader; one trimmer is enough).
        """
        self.store = store
        self._trims = trims
        # What was recorded before the store was attached goes out with the first flush.
        for event in self._cache.values():
            self._pending[event.id] = event
        self._cache.clear()
        start = await self._relist()
        self._tasks = [
            asyncio.create_task(self._follow(start + 1), name="events-watch"),
            asyncio.create_task(self._flusher(), name="events-flush"),
        ]

    async def aclose(self) -> None:
        """Write what is pending (best effort), then stop."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.store is not None and self._pending:
            with contextlib.suppress(StoreError, OSError):
                async with asyncio.timeout(2.0):
                    await self.flush()
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _relist(self) -> int:
        assert self.store is not None
        kvs, revision = await self.store.range(PREFIX)
        events = []
        for kv in kvs:
            try:
                events.append(Event.from_kv(kv))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("events.undecodable", key=kv.key, error=str(exc))
        events.sort(key=lambda e: (e.cursor, e.id))
        self._cache = OrderedDict((e.id, e) for e in events)
        for event in events:
            self._last[event.object] = event.id
        self.revision = revision
        return revision

    async def _follow(self, start: int) -> None:
        assert self.store is not None
        while True:
            try:
                async for batch in self.store.watch(PREFIX, start):
                    for change in batch:
                        self._apply(change.type, change.kv)
                    start = self.revision + 1
                return
            except CompactedError:
                start = await self._relist() + 1
            except StoreError as exc:
                log.warning("events.watch_lost", error=str(exc))
                await asyncio.sleep(1.0)
                with contextlib.suppress(StoreError):
                    start = await self._relist() + 1

    def _apply(self, kind: EventType, kv: KeyValue) -> None:
        self.revision = max(self.revision, kv.mod_revision)
        event_id = kv.key.removeprefix(PREFIX)
        if kind == EventType.DELETE:
            self._drop(event_id)
            return
        try:
            event = Event.from_kv(kv)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("events.undecodable", key=kv.key, error=str(exc))
            return
        self._cache[event_id] = event
        self._cache.move_to_end(event_id)
        self._publish(event)

    async def _flusher(self) -> None:
        while True:
            # Not ``wait_for``: on Python 3.11 it swallows a cancel that comes as the
            # event is set, and ``aclose`` then waits for a flusher asleep for an interval.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                if self._trims():
                    await self.trim()
            except (StoreError, OSError) as exc:
                log.warning("events.write_failed", error=str(exc))

    def _chunks(self, ops: list[Op]) -> Iterator[list[Op]]:
        assert self.store is not None
        most = self.store.max_txn_ops or 128
        budget = self.store.max_txn_bytes or 1 << 20
        chunk: list[Op] = []
        size = 0
        for op in ops:
            op_size = len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
            if chunk and (len(chunk) >= most or size + op_size > budget // 2):
                yield chunk
                chunk, size = [], 0
            chunk.append(op)
            size += op_size
        if chunk:
            yield chunk

    async def flush(self) -> int:
        """Write up to ``flush_batch`` pending events (and summaries); return how many."""
        store = self.store
        assert store is not None
        counts = self._counts
        room = self.settings.max_pending - len(self._pending)
        while counts.summaries and room > 0:
            key = next(iter(counts.summaries))
            summary = counts.summaries.pop(key).event()
            self._pending[summary.id] = summary
            room -= 1
        batch = {e.id: e for e in list(self._pending.values())[: self.settings.flush_batch]}
        # A failed write raises and leaves its events pending: the puts are idempotent.
        # One event the store refuses on its own is dropped, so it cannot block the rest.
        for chunk in self._chunks([Put(PREFIX + e.id, e.to_store()) for e in batch.values()]):
            try:
                result = await store.txn([], chunk)
            except StoreUnavailableError:
                raise
            except StoreError:  # refused, not unreachable: too large for the store
                if len(chunk) > 1:
                    raise
                event_id = chunk[0].key.removeprefix(PREFIX)
                if self._pending.get(event_id) is batch[event_id]:
                    del self._pending[event_id]
                counts.dropped += 1
                log.warning("events.refused", event_id=event_id)
                continue
            for op in chunk:
                event_id = op.key.removeprefix(PREFIX)
                written = batch[event_id]
                # A repeat recorded while the write was in flight stays pending.
                if self._pending.get(event_id) is written:
                    del self._pending[event_id]
                # Written through (the watch echoes it), so a repeat finds it at once.
                if event_id not in self._cache or self._cache[event_id].cursor < result.revision:
                    self._cache[event_id] = replace(written, cursor=result.revision)
            counts.written += len(chunk)
        return len(batch)

    async def trim(self) -> int:
        """Delete events beyond ``limit`` or older than ``ttl`` (at most ``flush_batch``)."""
        store = self.store
        assert store is not None
        victims = self._victims()
        for chunk in self._chunks([Delete(PREFIX + event_id) for event_id in victims]):
            await store.txn([], chunk)
            self._counts.trimmed += len(chunk)
            for op in chunk:
                self._drop(op.key.removeprefix(PREFIX))
        return len(victims)

    def _drop(self, event_id: str) -> None:
        event = self._cache.pop(event_id, None)
        if event is not None and self._last.get(event.object) == event_id:
            del self._last[event.object]

    def _victims(self) -> list[str]:
        settings = self.settings
        cutoff = self.clock.now() - timedelta(seconds=settings.ttl)
        excess = len(self._cache) - settings.limit
        victims: list[str] = []
        for event_id, event in self._cache.items():
            if len(victims) >= settings.flush_batch:
                break
            if len(victims) >= excess and event.time >= cutoff:
                break  # oldest first: the rest are newer
            victims.append(event_id)
        return victims

    def _trim_local(self) -> None:
        for event_id in self._victims():
            self._drop(event_id)

    def collector(self) -> Collector:
        return _EventsCollector(self)

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._counts.summaries)


class _EventsCollector(Collector):
    def __init__(self, recorder: EventRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.recorder._counts
        for name, value, text in (
            ("shoal_events_recorded", counts.recorded, "Events recorded by this manager."),
            (
                "shoal_events_aggregated",
                counts.aggregated,
                "Events folded into a summary event because too many were waiting to be written.",
            ),
            (
                "shoal_events_dropped",
                counts.dropped,
                "Events lost: more summaries than kept, or the store refused them.",
            ),
            ("shoal_events_written", counts.written, "Event writes to the store."),
            ("shoal_events_trimmed", counts.trimmed, "Events deleted past --event-limit/-ttl."),
        ):
            family = CounterMetricFamily(name, text)
            family.add_metric([], value)
            yield family
        stored = GaugeMetricFamily("shoal_events_stored", "Events this manager holds.")
        stored.add_metric([], len(self.recorder._cache))
        yield stored
        pending = GaugeMetricFamily("shoal_events_pending", "Events waiting to be written.")
        pending.add_metric([], self.recorder.pending)
        yield pending


_TASK_REASONS = {
    TaskState.RUNNING: ("TaskRunning", False),
    TaskState.COMPLETE: ("TaskCompleted", False),
    TaskState.FAILED: ("TaskFailed", True),
    TaskState.REJECTED: ("TaskRejected", True),
    TaskState.SHUTDOWN: ("TaskShutdown", False),
    TaskState.ORPHANED: ("TaskOrphaned", True),
}


def record_task_change(recorder: EventRecorder, old: object, new: object) -> None:
    """A task's observed state moved (an informer change): an event for the states users
    look for (``assigned``, ``accepted`` and ``starting`` pass too quickly to be worth a
    write: ``running`` names the node).
    """
    if not isinstance(new, Task) or (
        isinstance(old, Task) and old.status.state == new.status.state
    ):
        return
    old = old if isinstance(old, Task) else None
    found = _TASK_REASONS.get(new.status.state)
    if found is None:
        return
    reason, warning = found
    status = new.status
    before = old.status.state.value if old is not None else "new"
    text = f"{before} -> {status.state.value}"
    if new.node_id:
        text += f" on {new.node_id}"
    if status.state == TaskState.RUNNING and status.pid:
        text += f" (pid {status.pid})"
    if status.exit_code is not None and status.state != TaskState.RUNNING:
        text += f", exit code {status.exit_code}"
    detail = status.error or status.message  # why it ended ("running" needs no why)
    if detail and status.state.terminal:
        text += f": {detail}"
    recorder.record(
        f"task/{new.name}", reason, text, warning, service=new.service, node=new.node_id, quiet=True
    )


def node_update_event(node: Node) -> tuple[str, str]:
    """``(reason, message)`` for an operator's ``shoal node update``: what the node now is."""
    availability = node.spec.availability.value
    reason = {"active": "NodeActive", "pause": "NodePaused", "drain": "NodeDrained"}.get(
        availability, "NodeUpdated"
    )
    labels = ", ".join(f"{k}={v}" for k, v in sorted(node.spec.labels.items())) or "none"
    return reason, f"availability {availability}; labels set by operators: {labels}"
