"""Cooperative pacing: long passes give the event loop back every few milliseconds.

A manager runs every reconciler, every agent session, heartbeats and the
leader's lease renewal on one event loop. A reconcile over 20,000 slots or a
scheduling pass over 10,000 pending tasks is pure Python work; done in one go
it holds the loop for seconds, and heartbeats and lease renewals wait behind
it (nodes look dead, the leader loses its lease). A ``Pacer`` lets such a pass
check, cheaply and as often as it likes, whether it has run for ``SLICE``
seconds, and if so yield once to everything else that is waiting.

Passes that yield must tolerate the informer changing meanwhile; shoal's
writes compare on revisions, so a plan computed from a view that changed is
refused and recomputed, never applied blindly.
"""

from __future__ import annotations

import asyncio
import time

# The longest stretch of work between two yields.
SLICE = 0.01


class Pacer:
    """``await pacer()`` yields to the event loop once ``slice`` seconds have passed."""

    __slots__ = ("_slice", "_until")

    def __init__(self, slice: float = SLICE) -> None:
        self._slice = slice
        self._until = time.perf_counter() + slice

    async def __call__(self) -> None:
        if time.perf_counter() >= self._until:
            await asyncio.sleep(0)
            self._until = time.perf_counter() + self._slice
