"""Send what piled up, in bursts: one flusher for the dispatcher and the agent's reporter.

Both sides of a session produce many small changes at once (a scheduling pass
assigns hundreds of tasks; an agent starting them reports hundreds of states)
and want them to travel together without a timer delaying a lone change. A
``Flusher`` is poked for every change and runs its ``flush`` ``coalesce``
seconds after the first poke of a burst, so changes made in the same moment go
in one message, and then at most once per ``window`` while pokes keep coming.
A lone change therefore leaves within milliseconds, and a burst of hundreds
costs a few messages.

What is pending, how it is sent and what a failed send means stay with the
caller: ``flush`` takes everything pending at that moment; whatever it leaves
or puts back goes out on a later poke. An exception from ``flush`` ends ``run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

COALESCE = 0.005
WINDOW = 0.025


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
