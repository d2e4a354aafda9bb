"""The leader's lease, renewed from a thread of its own so a busy event loop cannot lose it.

The manager's event loop carries every reconciler, agent session and store
call. Under a large apply on etcd (20,000 tasks, three managers and etcd on
two cores) a keep-alive sent from that loop waited behind everything else
queued on it; past the lease's ttl the leader stepped down although it was
alive and working, the lead moved, and the next leader started over (issue 8:
the lease was lost 11 and 15 times in two such runs).

So ``LeaseElection`` renews through a ``LeaseKeeper`` when the store offers a
renewer usable from another thread (``Store.lease_renewer``: for etcd, a
synchronous gRPC channel of its own). The keeper's thread does nothing else
and needs only the GIL, which the loop's passes give up every few
milliseconds.

Safety does not rest on the keeper: every write the leader makes still
carries the fence (``shoal.manager.election``). What a thread could hide is a
loop stuck for good, which would keep the lead while leading nothing, so the
keeper renews only while the loop has been seen running within
``loop_grace`` seconds (the election ``touch``es it every ttl/3), and reports
the lease lost otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import structlog

from shoal.errors import NotFoundError, StoreError
from shoal.store.base import LeaseRenewer

log = structlog.get_logger(__name__)


class LeaseKeeper:
    """Keeps one lease alive from a thread; ``deadline`` says until when it surely is."""

    def __init__(
        self,
        renewer: LeaseRenewer,
        ttl: float,
        deadline: float,
        on_lost: Callable[[str], None],
        loop_grace: float,
    ) -> None:
        self.ttl = ttl
        # Monotonic: the lease is certainly alive until then (written by the thread,
        # read on the loop: a float assignment is atomic).
        self.deadline = deadline
        self.last_error: str | None = None
        self._renewer = renewer
        self._on_lost = on_lost
        self._loop_grace = loop_grace
        self._alive = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start renewing; ``on_lost`` will be called on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        """The caller's event loop is running (call it every ttl/3 or so)."""
        self._alive = time.monotonic()

    async def aclose(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _lost(self, why: str) -> None:
        if not self._stopping.is_set() and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._on_lost, why)

    def _run(self) -> None:
        try:
            self._renew()
        finally:
            self._renewer.close()

    def _renew(self) -> None:
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                self._lost("the lease could not be renewed before it expired")
                return
            if self._stopping.wait(min(self.ttl / 3, self.deadline - now)):
                return
            if time.monotonic() - self._alive > self._loop_grace:
                self._lost(f"the manager's event loop has not run for {self._loop_grace:g}s")
                return
            sent = time.monotonic()
            if sent >= self.deadline:
                continue
            try:
                self._renewer.renew(self.deadline - sent)
            except NotFoundError:
                self._lost("the lease expired")
                return
            except StoreError as exc:
                self.last_error = str(exc)
                log.warning("election.keepalive_failed", error=self.last_error)
                continue
            self.deadline = sent + self.ttl
