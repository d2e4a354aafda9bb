"""The informer: an in-memory, always-current copy of every object in the store:
services, tasks and nodes, the secrets and configs (their bytes still sealed),
and the GitOps objects (syncs, apply sets).

Reconcilers read only from here, never from the store, so a reconcile costs no
I/O until it writes. The cache is fed two ways:

* a store watch from the revision of the initial list, so changes made by
  anybody reach it (and a compacted revision triggers a relist);
* write-through: ``commit`` applies a successful transaction to the cache at
  once, so a controller sees its own writes before the watch echoes them.

Each key remembers the revision it was last applied at (deleted keys too, as
tombstones), so the late echo of an older revision is ignored rather than
undoing a newer write. The same rule holds for a relist: its snapshot is as
old as the revision the range was answered at, and a write-through committed
while the range was in flight is newer than the snapshot, so the relist
neither rolls it back nor deletes an object it created. Listeners are called
synchronously with ``(old, new)`` for every change; they only enqueue keys.

The watch runs under ``shoal.supervise``: an unexpected exception is logged
and counted, and the watch starts again from a fresh relist, so the cache
never silently stops following the store. An object that cannot be decoded
is logged and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog
from pydantic import ValidationError

from shoal.errors import CompactedError, StoreError
from shoal.models import DesiredState, Node, Service, Task, TaskState
from shoal.models.secret import Config, Secret
from shoal.models.sync import ApplySet, Sync
from shoal.store.base import EventType, KeyValue, Store
from shoal.store.typed import (
    APPLYSETS,
    CONFIGS,
    NODES,
    SECRETS,
    SERVICES,
    SYNCS,
    TASKS,
    Change,
    Object,
    TypedStore,
    decode,
)
from shoal.supervise import supervise

log = structlog.get_logger(__name__)

T = TypeVar("T", Service, Task, Node, Secret, Config, Sync, ApplySet)
# The prefixes whose objects the informer caches; keys elsewhere (events) pass it by.
TRACKED = (SERVICES, TASKS, NODES, SECRETS, CONFIGS, SYNCS, APPLYSETS)
Listener = Callable[[Object | None, Object | None], None]


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    obj: T
    revision: int


class Informer:
    """The cache described above."""

    def __init__(
        self, store: Store, typed: TypedStore, restarts: Counter[str] | None = None
    ) -> None:
        self.store = store
        self.typed = typed
        # How often the watch died of an unexpected error (``shoal.supervise``).
        self.restarts: Counter[str] = restarts if restarts is not None else Counter()
        self.services: dict[str, Entry[Service]] = {}
        self.tasks: dict[str, Entry[Task]] = {}
        self.nodes: dict[str, Entry[Node]] = {}
        self.secrets: dict[str, Entry[Secret]] = {}
        self.configs: dict[str, Entry[Config]] = {}
        self.syncs: dict[str, Entry[Sync]] = {}
        self.applysets: dict[str, Entry[ApplySet]] = {}
        self.tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self.tasks_by_node: dict[str, set[str]] = defaultdict(set)
        # Per service, its live tasks (desired running) and how many of those run: kept as
        # tasks change, so a service's summary (``get services``) walks none of them.
        self._live: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self._applied: dict[str, int] = {}
        self._relisting = 0
        self._listeners: list[Listener] = []
        self._watch_task: asyncio.Task[None] | None = None
        self.revision = 0
        self.synced = asyncio.Event()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """List everything, then keep following the store in the background."""
        start = await self._relist()

        async def follow(restarted: bool) -> None:
            # After a crash the event being applied may be lost: relist to repair it.
            await self._follow(await self._relist() + 1 if restarted else start + 1)

        self._watch_task = asyncio.create_task(
            supervise("informer-watch", follow, self.restarts), name="informer-watch"
        )
        self.synced.set()

    async def catch_up(self) -> int:
        """Relist now: afterwards the cache reflects at least the store's current revision.

        A new leader calls this before its reconcilers start, so they never act
        on a view older than the writes of the previous leader's term.
        """
        return await self._relist()

    async def aclose(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task

    async def commit(self, changes: Sequence[Change], *, atomic: bool = False) -> int:
        """Commit through the typed store and apply the result here at once.

        ``atomic``: all in one transaction, or ``StoreError`` if that is more
        than the store takes. Otherwise large batches go in chunks
        (``TypedStore.commit_in_chunks``), each applied here as it is written,
        so a ``ConflictError`` may come after some chunks were committed.
        """
        if not changes:
            return self.revision
        if atomic:
            revision = await self.typed.commit(changes)
            for change in changes:
                self._apply(change.key, change.obj, revision)
            return revision
        revision = self.revision
        async for chunk, revision in self.typed.commit_in_chunks(changes):
            for change in chunk:
                self._apply(change.key, change.obj, revision)
        return revision

    # ----------------------------------------------------------------- queries

    def service(self, name: str) -> Entry[Service] | None:
        return self.services.get(name)

    def tasks_of_service(self, name: str) -> list[Entry[Task]]:
        return [self.tasks[i] for i in self.tasks_by_service.get(name, ())]

    def task_counts(self, service: str) -> tuple[int, int]:
        """How many of the service's tasks are live (desired ``running``), and how many of
        those run."""
        return self._live[service], self._running[service]

    def tasks_on_node(self, node_id: str) -> list[Entry[Task]]:
        return [self.tasks[i] for i in self.tasks_by_node.get(node_id, ())]

    def all_tasks(self) -> Iterable[Entry[Task]]:
        return self.tasks.values()

    # -------------------------------------------------------------- internals

    async def _relist(self) -> int:
        self._relisting += 1  # tombstones must outlive the range: see _prune_tombstones
        try:
            kvs, revision = await self.store.range("/")
        finally:
            self._relisting -= 1
        # Writes committed through here while the range was in flight carry
        # revisions above ``revision``; ``_apply`` keeps them (see the docstring).
        seen: set[str] = set()
        for kv in kvs:
            seen.add(kv.key)
            obj = self._decode(kv)
            if obj is not None:
                self._apply(kv.key, obj, kv.mod_revision)
        for key in [k for k in self._known_keys() if k not in seen]:
            self._apply(key, None, revision)
        self.revision = max(self.revision, revision)
        return revision

    def _decode(self, kv: KeyValue) -> Object | None:
        try:
            return decode(kv)
        except ValidationError as exc:
            log.error("informer.undecodable", key=kv.key, error=str(exc))
            return None

    def _known_keys(self) -> list[str]:
        return (
            [SERVICES + k for k in self.services]
            + [TASKS + k for k in self.tasks]
            + [NODES + k for k in self.nodes]
            + [SECRETS + k for k in self.secrets]
            + [CONFIGS + k for k in self.configs]
            + [SYNCS + k for k in self.syncs]
            + [APPLYSETS + k for k in self.applysets]
        )

    async def _follow(self, start: int) -> None:
        while True:
            try:
                async for batch in self.store.watch("/", start):
                    for event in batch:
                        kv = event.kv
                        start = kv.mod_revision + 1
                        if self._applied.get(kv.key, 0) >= kv.mod_revision:
                            continue  # the echo of our own write: skip the decoding too
                        if event.type == EventType.DELETE:
                            self._apply(kv.key, None, kv.mod_revision)
                        else:
                            obj = self._decode(kv)
                            if obj is not None:
                                self._apply(kv.key, obj, kv.mod_revision)
                    self._prune_tombstones(start - 1)
                return
            except CompactedError:
                log.warning("informer.relist", reason="watch revision compacted")
                start = await self._relist() + 1
            except StoreError as exc:
                log.warning("informer.watch_failed", error=str(exc))
                await asyncio.sleep(1.0)

    def _prune_tombstones(self, watched: int) -> None:
        """Forget deleted keys whose revision the watch has passed: no echo can follow."""
        live = len(self.services) + len(self.tasks) + len(self.nodes)
        if len(self._applied) < live + 1024 or self._relisting:
            # While a relist's range is in flight its snapshot may still hold a key
            # deleted since: the tombstone is what keeps the relist from reviving it.
            return
        for key, revision in list(self._applied.items()):
            if revision <= watched and not self._holds(key):
                del self._applied[key]

    def _holds(self, key: str) -> bool:
        if key.startswith(TASKS):
            return key[len(TASKS) :] in self.tasks
        if key.startswith(SERVICES):
            return key[len(SERVICES) :] in self.services
        if key.startswith(SECRETS):
            return key[len(SECRETS) :] in self.secrets
        if key.startswith(CONFIGS):
            return key[len(CONFIGS) :] in self.configs
        if key.startswith(SYNCS):
            return key[len(SYNCS) :] in self.syncs
        if key.startswith(APPLYSETS):
            return key[len(APPLYSETS) :] in self.applysets
        return key[len(NODES) :] in self.nodes

    def _apply(self, key: str, obj: Object | None, revision: int) -> None:
        if not key.startswith(TRACKED):
            return  # events and other keys: no cache, no tombstone
        if self._applied.get(key, 0) >= revision:
            return
        self._applied[key] = revision
        self.revision = max(self.revision, revision)
        old: Object | None
        if key.startswith(TASKS):
            old = self._apply_task(key[len(TASKS) :], obj, revision)
        elif key.startswith(SERVICES):
            name = key[len(SERVICES) :]
            prev = self.services.pop(name, None)
            old = prev.obj if prev else None
            if isinstance(obj, Service):
                self.services[name] = Entry(obj, revision)
        elif key.startswith(NODES):
            node_id = key[len(NODES) :]
            prev_node = self.nodes.pop(node_id, None)
            old = prev_node.obj if prev_node else None
            if isinstance(obj, Node):
                self.nodes[node_id] = Entry(obj, revision)
        elif key.startswith(SECRETS):
            prev_secret = self.secrets.pop(key[len(SECRETS) :], None)
            old = prev_secret.obj if prev_secret else None
            if isinstance(obj, Secret):
                self.secrets[obj.name] = Entry(obj, revision)
        elif key.startswith(CONFIGS):
            prev_config = self.configs.pop(key[len(CONFIGS) :], None)
            old = prev_config.obj if prev_config else None
            if isinstance(obj, Config):
                self.configs[obj.name] = Entry(obj, revision)
        elif key.startswith(SYNCS):
            name = key[len(SYNCS) :]
            prev_sync = self.syncs.pop(name, None)
            old = prev_sync.obj if prev_sync else None
            if isinstance(obj, Sync):
                self.syncs[name] = Entry(obj, revision)
        elif key.startswith(APPLYSETS):
            name = key[len(APPLYSETS) :]
            prev_set = self.applysets.pop(name, None)
            old = prev_set.obj if prev_set else None
            if isinstance(obj, ApplySet):
                self.applysets[name] = Entry(obj, revision)
        else:
            return
        for listener in self._listeners:
            listener(old, obj)

    def _apply_task(self, task_id: str, obj: Object | None, revision: int) -> Task | None:
        prev = self.tasks.pop(task_id, None)
        if prev:
            self.tasks_by_service[prev.obj.service].discard(task_id)
            if prev.obj.node_id:
                self.tasks_by_node[prev.obj.node_id].discard(task_id)
            self._count(prev.obj, -1)
        if isinstance(obj, Task):
            self.tasks[task_id] = Entry(obj, revision)
            self.tasks_by_service[obj.service].add(task_id)
            if obj.node_id:
                self.tasks_by_node[obj.node_id].add(task_id)
            self._count(obj, 1)
        return prev.obj if prev else None

    def _count(self, task: Task, sign: int) -> None:
        if task.desired_state != DesiredState.RUNNING:
            return
        for counter, counts in (
            (self._live, True),
            (self._running, task.status.state == TaskState.RUNNING),
        ):
            if counts:
                counter[task.service] += sign
                if not counter[task.service]:
                    del counter[task.service]  # a deleted service leaves nothing behind
