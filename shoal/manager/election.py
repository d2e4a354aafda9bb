"""Which manager leads: a store lease, a leader key, and a fence on every write.

Any number of managers share one etcd-backed store; exactly one of them, the
leader, runs the reconcilers and the agents' sessions. Each manager:

1. grants itself a lease (``lease_ttl`` seconds, default 5) and keeps it alive
   every ``ttl / 3``;
2. announces itself under ``/cluster/managers/<id>`` with that lease, so the
   list of live managers is in the store (and a dead manager leaves it on its
   own when its lease expires);
3. campaigns: ``txn(version(/cluster/leader) == 0, put(/cluster/leader, me,
   lease))``. The winner is leader for as long as that key exists; the others
   watch it and campaign again when it is deleted.

Why a lease is not enough, and what the fence adds. A lease only says "this
manager renewed recently". A leader can be paused (SIGSTOP, a long GC, a VM
migration) past its lease without noticing; meanwhile the key expires, another
manager wins, and when the old one resumes, writes it had already prepared
would land on top of the new leader's. So every write a leader makes is a
transaction that also compares the leader key: ``create_revision(/cluster/
leader) == R`` and ``value == me``, where ``R`` is the revision at which this
manager created the key. The comparison is evaluated by etcd inside the same
Raft-ordered transaction as the write, so it holds exactly when this manager's
term is still current: once the key expired (deleted) or was re-created by
anybody (a new ``create_revision``), the fence fails and nothing is written.
No clock is trusted for safety; clocks only make the leader step down early.

Stepping down. The leader tracks a local deadline, ``send time of the last
successful keep-alive + ttl`` (never later than etcd's own expiry, which counts
from when it received the keep-alive). When the deadline passes without a
renewal, or a keep-alive finds the lease gone, or a fenced write fails and a
read shows the key is no longer ours, the leader stops its reconcilers and
agent sessions at once, revokes what is left of its lease and campaigns again
with a new one. A write attempted after the deadline is refused locally
(``NotLeaderError``) without being sent.

A new leader first catches its cache up to the store (every write of an
earlier term has a revision below its own key's ``create_revision``), then
starts the reconcilers, and gives nodes a longer heartbeat grace so agents
have time to find it before anything is declared down.

With the embedded stores (sqlite, memory) there is one manager: the sqlite
``flock`` already guarantees it, so ``SoleElection`` is always leader and adds
no compares.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from pydantic import ValidationError

from shoal.errors import CompactedError, NotFoundError, NotLeaderError, StoreError
from shoal.manager.leasekeeper import LeaseKeeper
from shoal.models.base import Model
from shoal.store.base import Compare, EventType, Put, Store
from shoal.supervise import supervise

log = structlog.get_logger(__name__)

LEADER_KEY = "/cluster/leader"
MANAGERS = "/cluster/managers/"
_CLUSTER = "/cluster/"

Callback = Callable[[], Awaitable[None]]
# A keeper renews the lease only while this manager's event loop ran within this long.
LOOP_GRACE = 30.0


class ManagerInfo(Model):
    """A manager as announced in the store."""

    id: str
    address: str
    started_at: datetime
    pid: int = 0
    lease: int = 0
    # Where its --metrics-listen serves /metrics ("" when it serves none).
    metrics_address: str = ""


class Election(abc.ABC):
    """Leadership for one manager; see the module docstring."""

    def __init__(self, me: ManagerInfo) -> None:
        self.me = me
        self.is_leader = False
        self.leader: ManagerInfo | None = None
        self.managers: dict[str, ManagerInfo] = {}
        self.last_error: str | None = None
        self.changed = asyncio.Event()  # set on every change of leader or managers
        # Leadership terms seen to begin (the leader key created) since this start.
        self.leader_changes = 0

    @abc.abstractmethod
    async def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        """Begin campaigning; the callbacks run when this manager gains or loses the lead."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    def compares(self) -> list[Compare]:
        """The fence for a write; raises ``NotLeaderError`` if this manager cannot write."""

    async def check(self) -> None:
        """After a fenced write failed: raise ``NotLeaderError`` if the fence no longer holds."""
        return None  # no fence, nothing to check (SoleElection)

    def not_leader(self) -> NotLeaderError:
        """The error for a write this manager cannot make, naming where to go instead."""
        if self.leader is not None and self.leader.id != self.me.id:
            return NotLeaderError(
                f"manager {self.me.address} is not the leader; the leader is {self.leader.address}"
            )
        cause = f": {self.last_error}" if self.last_error else " (an election is in progress)"
        return NotLeaderError(f"no shoal manager leads right now{cause}")

    def _notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class SoleElection(Election):
    """One manager on an embedded store: always the leader, no fence needed."""

    async def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        self.is_leader = True
        self.leader = self.me
        self.managers = {self.me.id: self.me}
        await on_elected()
        self._notify()

    async def aclose(self) -> None:
        self.is_leader = False

    def compares(self) -> list[Compare]:
        return []


class LeaseElection(Election):
    """Election through a store lease and the leader key, with a fence on every write."""

    def __init__(
        self,
        store: Store,
        me: ManagerInfo,
        ttl: float = 5.0,
        restarts: Counter[str] | None = None,
    ) -> None:
        super().__init__(me)
        if ttl <= 0:
            raise ValueError("the lease ttl must be positive")
        self.store = store
        self.ttl = ttl
        # How often the observer died of an unexpected error (``shoal.supervise``).
        self.restarts: Counter[str] = restarts if restarts is not None else Counter()
        self._fence: list[Compare] = []
        self._deadline = 0.0  # monotonic: the lease is certainly alive until then
        self._lost = asyncio.Event()
        self._stale_leases: list[int] = []  # of earlier terms, revoked when the store answers
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._keeper: LeaseKeeper | None = None

    async def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        self._tasks = [
            # Without the observer a follower never learns the leader key is gone, and
            # never campaigns again: it is supervised (restarted after any error).
            asyncio.create_task(
                supervise("election-observe", lambda _: self._observe(), self.restarts),
                name="election-observe",
            ),
            asyncio.create_task(self._campaign(on_elected, on_deposed), name="election-campaign"),
        ]

    async def aclose(self) -> None:
        self._closed = True
        self.is_leader = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease = self.me.lease
        if lease:
            with contextlib.suppress(StoreError, NotFoundError, TimeoutError):
                # Hand over at once instead of making the others wait for the ttl.
                async with asyncio.timeout(2.0):
                    await self.store.revoke(lease)

    # ----------------------------------------------------------------- fence

    def compares(self) -> list[Compare]:
        if not self.is_leader or not self._fence:
            raise self.not_leader()
        if time.monotonic() >= self._lease_deadline():
            self._lose("the lease was not renewed in time")
            raise self.not_leader()
        return list(self._fence)

    async def check(self) -> None:
        if not self._fence:
            raise self.not_leader()
        kv = await self.store.get(LEADER_KEY)
        ours = [c.value for c in self._fence]
        if kv is None or [kv.create_revision, kv.value] != ours:
            self._lose("the leader key is no longer ours")
            raise self.not_leader()

    def _lease_deadline(self) -> float:
        return self._keeper.deadline if self._keeper is not None else self._deadline

    def _keeper_lost(self, why: str) -> None:
        if self._keeper is not None and self._keeper.last_error is not None:
            self.last_error = self._keeper.last_error  # why it could not renew
        self._lose(why)

    def _lose(self, why: str) -> None:
        if self.is_leader:
            log.warning("election.lost", manager=self.me.id, reason=why)
        self.is_leader = False
        self._lost.set()

    # -------------------------------------------------------------- campaign

    async def _campaign(self, on_elected: Callback, on_deposed: Callback) -> None:
        delay = 0.1
        while not self._closed:
            try:
                await self._term(on_elected, on_deposed)
                delay = 0.1
                continue
            except (StoreError, NotFoundError) as exc:  # NotFoundError: our lease expired
                self.last_error = str(exc)
                log.warning("election.store_error", manager=self.me.id, error=str(exc))
            except Exception as exc:  # a bug must not end campaigning for good
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("election.failed", manager=self.me.id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _term(self, on_elected: Callback, on_deposed: Callback) -> None:
        """One lease: announce, campaign until elected or the lease is lost, lead, step down."""
        self._lost = asyncio.Event()
        for stale in list(self._stale_leases):
            # A lease that outlived our term (e.g. quorum was lost) would keep our old
            # leader key alive for a whole ttl after the store recovers.
            await self.store.revoke(stale)
            self._stale_leases.remove(stale)
        granted = time.monotonic()
        lease = await self.store.grant_lease(self.ttl)
        self._deadline = granted + self.ttl
        self.me = self.me.model_copy(update={"lease": lease})
        renewer = self.store.lease_renewer(lease)
        if renewer is not None:  # renewed from a thread (shoal.manager.leasekeeper)
            self._keeper = LeaseKeeper(
                renewer, self.ttl, self._deadline, self._keeper_lost, LOOP_GRACE
            )
            self._keeper.start()
            keeper = asyncio.create_task(self._touch(self._keeper), name="election-touch")
        else:
            keeper = asyncio.create_task(self._keep_alive(lease), name="election-keepalive")
        try:
            await self.store.put(MANAGERS + self.me.id, self.me.to_json_bytes(), lease=lease)
            self.last_error = None
            while not self._lost.is_set():
                value = self.me.to_json_bytes()
                result = await self.store.txn(
                    [Compare(LEADER_KEY, "version", "==", 0)],
                    [Put(LEADER_KEY, value, lease=lease)],
                )
                if result.succeeded:
                    await self._lead(result.revision, value, on_elected, on_deposed)
                    return
                await self._wait_for_vacancy()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if self._keeper is not None:
                await self._keeper.aclose()
                self._keeper = None
            self._fence = []
            if not self._closed:
                try:
                    async with asyncio.timeout(self.ttl):
                        await self.store.revoke(lease)
                except (StoreError, TimeoutError):
                    self._stale_leases.append(lease)

    async def _lead(
        self, revision: int, value: bytes, on_elected: Callback, on_deposed: Callback
    ) -> None:
        self._fence = [
            Compare(LEADER_KEY, "create_revision", "==", revision),
            Compare(LEADER_KEY, "value", "==", value),
        ]
        self.is_leader = True
        self.leader = self.me
        self._notify()
        log.info("election.elected", manager=self.me.id, address=self.me.address, term=revision)
        try:
            await on_elected()
            await self._lost.wait()
        finally:
            self.is_leader = False
            self._fence = []
            if self.leader is not None and self.leader.id == self.me.id:
                self.leader = None
            self._notify()
            log.warning("election.stepped_down", manager=self.me.id, term=revision)
            await on_deposed()

    async def _wait_for_vacancy(self) -> None:
        """Until the leader key is gone (or our own lease is lost)."""
        while self.leader is not None and not self._lost.is_set():
            changed = asyncio.ensure_future(self.changed.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait({changed, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                lost.cancel()
        if self.leader is None:
            # The observer has not seen the key we just lost to yet; the txn decides anyway.
            await asyncio.sleep(0.1)

    async def _touch(self, keeper: LeaseKeeper) -> None:
        """Tell the keeper this loop runs, every ttl/3; note its keep-alive errors."""
        while True:
            keeper.touch()
            if keeper.last_error is not None:
                self.last_error = keeper.last_error
            await asyncio.sleep(self.ttl / 3)

    async def _keep_alive(self, lease: int) -> None:
        """Renew every ttl/3; declare the lease lost when its local deadline passes."""
        while True:
            now = time.monotonic()
            if now >= self._deadline:
                self._lose("the lease could not be renewed before it expired")
                return
            await asyncio.sleep(min(self.ttl / 3, self._deadline - now))
            if time.monotonic() >= self._deadline:
                continue
            sent = time.monotonic()
            try:
                async with asyncio.timeout(self._deadline - sent):
                    await self.store.keepalive(lease)
            except NotFoundError:
                self._lose("the lease expired")
                return
            except (StoreError, TimeoutError) as exc:
                self.last_error = str(exc) or await self._diagnose("a lease keep-alive timed out")
                log.warning("election.keepalive_failed", manager=self.me.id, error=self.last_error)
                continue
            self._deadline = sent + self.ttl

    async def _diagnose(self, what: str) -> str:
        """``what`` happened; say why, as far as asking each store endpoint tells."""
        try:
            async with asyncio.timeout(3.0):
                health = await self.store.health()
        except (StoreError, TimeoutError):
            return f"{what}; the store does not answer"
        reachable = [h for h in health if not h.detail.startswith("unreachable")]
        if any(h.healthy for h in health):
            return f"{what}; {len(reachable)} of {len(health)} store endpoints answer"
        return (
            f"{what}: the store has lost its quorum ({len(reachable)} of {len(health)} "
            "members reachable, none has a leader)"
        )

    # --------------------------------------------------------------- observe

    async def _observe(self) -> None:
        """Follow ``/cluster/``: the live managers and who leads."""
        while not self._closed:
            try:
                kvs, revision = await self.store.range(_CLUSTER)
                self.managers = {}
                self.leader = None
                for kv in kvs:
                    self._seen(kv.key, kv.value)
                self._notify()
                async for batch in self.store.watch(_CLUSTER, revision + 1):
                    for event in batch:
                        created = event.type == EventType.PUT and event.kv.version == 1
                        if event.kv.key == LEADER_KEY and created:
                            self.leader_changes += 1
                        self._seen(
                            event.kv.key,
                            event.kv.value if event.type == EventType.PUT else None,
                        )
                    self._notify()
                return
            except CompactedError:
                continue
            except StoreError as exc:
                self.last_error = str(exc)
                await asyncio.sleep(0.5)

    def _seen(self, key: str, value: bytes | None) -> None:
        if key != LEADER_KEY and not key.startswith(MANAGERS):
            return  # /cluster/config and the like
        try:
            info = ManagerInfo.from_wire(value) if value else None
        except ValidationError:
            log.warning("election.bad_record", key=key)
            return
        if key == LEADER_KEY:
            self.leader = info
        elif key.startswith(MANAGERS):
            manager_id = key[len(MANAGERS) :]
            if info is None:
                self.managers.pop(manager_id, None)
            else:
                self.managers[manager_id] = info


def manager_info(address: str) -> ManagerInfo:
    """This process as a manager record: a fresh id per start."""
    return ManagerInfo(
        id=secrets.token_hex(4),
        address=address,
        started_at=datetime.now(UTC),
        pid=os.getpid(),
    )
