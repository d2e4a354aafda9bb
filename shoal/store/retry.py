"""Read, modify, write again: retrying a write that lost an optimistic-concurrency race.

Writers compute a change from the informer's cache and commit it comparing the
revision they read (``shoal.store.typed``). ``ConflictError`` means another
writer got there first and the cache is, for a moment, behind the store: the
change must be computed again from the newer object, not resent. So an attempt
is a function that re-reads and commits; between attempts the writer pauses
(doubling from ``pause``) to let the cache learn the newer revision, instead of
recomputing the same stale change at once. After ``attempts`` lost races the
``ConflictError`` goes to the caller, worded by ``what``.

Every other error passes through at once: only a lost race is worth retrying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shoal.errors import ConflictError

T = TypeVar("T")

ATTEMPTS = 5
PAUSE = 0.005


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    attempts: int = ATTEMPTS,
    pause: float = PAUSE,
) -> T:
    """``await attempt()`` until it does not raise ``ConflictError``, at most ``attempts`` times.

    ``what`` completes the final error: ``f"{what} kept changing; try again"``.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    tried = 0
    while True:
        tried += 1
        try:
            return await attempt()
        except ConflictError as exc:
            if tried >= attempts:
                raise ConflictError(f"{what} kept changing; try again") from exc
        await asyncio.sleep(pause * 2 ** (tried - 1))
