"""Send what piled up, in bursts: the flushers of the dispatcher and the agent's reporter.

Both sides of a session produce many small changes at once (a scheduling pass
assigns hundreds of tasks; an agent starting them reports hundreds of states)
and want them to travel together without a timer delaying a lone change.

A ``Flusher`` is poked for every change and runs its ``flush`` ``coalesce``
seconds after the first poke of a burst, so changes made in the same moment go
in one message, and then at most once per ``window`` while pokes keep coming.
A lone change therefore leaves within milliseconds, and a burst of hundreds
costs a few messages. The agent's reporter uses one per node.

A ``KeyedFlusher`` does the same for many destinations at once (the
dispatcher: one key per agent session), where a burst is not one moment but a
stream: a large apply places tasks over seconds, a few per node at a time, in
an order that spreads them over every node, so a per-moment coalescing sends
most nodes one message per task. Each key is therefore held: a key poked
after ``hold`` seconds without a flush of its own, or after ``quiet`` seconds
without a poke of any key (a lone change, the first of a burst), is flushed
``coalesce`` seconds later, as above; a key poked again sooner, while changes
keep coming, waits, gathering its changes, until ``hold`` seconds after that poke,
or until nothing at all has been poked for ``quiet`` seconds (the stream of
changes has ended: everything held goes at once, so the last tasks of an apply
wait ``quiet``, not ``hold``). A node that receives ten tasks over a
five-second apply then gets a few messages instead of ten.

What is pending, how it is sent and what a failed send means stay with the
caller: ``flush`` takes everything pending at that moment (for a
``KeyedFlusher``, of the keys it is given); whatever it leaves or puts back
goes out on a later poke. An exception from ``flush`` ends ``run``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

COALESCE = 0.005
WINDOW = 0.025
# KeyedFlusher: how long a key may be held while it keeps changing, and how long a
# pause of every key ends the holding.
HOLD = 1.0
QUIET = 0.05

K = TypeVar("K", bound=Hashable)


class Flusher:
    """Runs ``flush`` after bursts of ``poke()``: coalesced, at most once per window."""

    def __init__(self, coalesce: float = COALESCE, window: float = WINDOW) -> None:
        self.coalesce = coalesce
        self.window = window
        self._wanted = asyncio.Event()

    def poke(self) -> None:
        """Something is pending: flush soon."""
        self._wanted.set()

    async def run(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Flush after every burst of pokes, until cancelled or ``flush`` raises."""
        while True:
            await self._wanted.wait()
            await asyncio.sleep(self.coalesce)
            self._wanted.clear()
            await flush()
            await asyncio.sleep(self.window)


class KeyedFlusher(Generic[K]):
    """Runs ``flush(keys)`` for the keys poked: a key alone at once, a busy key held
    (module docstring)."""

    def __init__(
        self, coalesce: float = COALESCE, hold: float = HOLD, quiet: float = QUIET
    ) -> None:
        self.coalesce = coalesce
        self.hold = hold
        self.quiet = quiet
        self._wanted = asyncio.Event()
        self._fresh: dict[K, None] = {}  # due at the next flush
        # Held keys by the time of their first poke since their last flush (in that
        # order, so the keys due are always the first ones).
        self._held: dict[K, float] = {}
        self._flushed: dict[K, float] = {}  # when each key was last flushed
        self._last = -math.inf  # the last poke of any key

    def poke(self, key: K) -> None:
        """``key`` has something pending: flush it soon (or when its hold ends)."""
        now = asyncio.get_running_loop().time()
        quiet = now - self._last >= self.quiet  # the first change after a pause
        self._last = now
        if key in self._fresh or key in self._held:
            return
        if quiet or now - self._flushed.get(key, -math.inf) >= self.hold:
            self._fresh[key] = None
        else:
            self._held[key] = now
        self._wanted.set()

    def forget(self, key: K) -> None:
        """``key`` is gone (its session ended): nothing of it is flushed any more."""
        self._fresh.pop(key, None)
        self._held.pop(key, None)
        self._flushed.pop(key, None)

    def _due(self, now: float) -> list[K]:
        due = list(self._fresh)
        self._fresh.clear()
        if now - self._last >= self.quiet:
            due += self._held
            self._held.clear()
        else:
            for key, since in self._held.items():
                if since + self.hold > now:
                    break
                due.append(key)
            for key in due:
                self._held.pop(key, None)
        for key in due:
            self._flushed[key] = now
        return due

    async def run(self, flush: Callable[[list[K]], Awaitable[None]]) -> None:
        """Flush the keys due, every ``coalesce`` while any is pending, until cancelled or
        ``flush`` raises."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            await asyncio.sleep(self.coalesce)
            due = self._due(loop.time())
            if not self._fresh and not self._held:
                self._wanted.clear()
            if due:
                await flush(due)
