"""The shared flusher: a burst travels together, a lone change does not wait.

Loop time is virtual (``looptime``): the windows are the real ones and take no
real time.
"""

from __future__ import annotations

import asyncio

import pytest

from shoal.batching import COALESCE, WINDOW, Flusher

pytestmark = pytest.mark.looptime


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_a_burst_is_one_flush_and_more_changes_wait_for_the_window() -> None:
    flusher = Flusher()
    pending: list[int] = []
    sent: list[tuple[float, list[int]]] = []

    async def flush() -> None:
        batch, pending[:] = list(pending), []
        sent.append((now(), batch))

    job = asyncio.create_task(flusher.run(flush))
    start = now()
    for item in range(100):  # one burst: every change in the same moment
        pending.append(item)
        flusher.poke()
    await asyncio.sleep(COALESCE * 2)
    assert [batch for _, batch in sent] == [list(range(100))]
    assert sent[0][0] == pytest.approx(start + COALESCE)

    pending.append(100)  # inside the window: waits for it to end
    flusher.poke()
    await asyncio.sleep(WINDOW + COALESCE)
    assert [batch for _, batch in sent][1:] == [[100]]
    assert sent[1][0] >= sent[0][0] + WINDOW
    job.cancel()


async def test_a_lone_change_goes_within_the_coalescing_delay() -> None:
    flusher = Flusher()
    flushed = asyncio.Event()

    async def flush() -> None:
        flushed.set()

    job = asyncio.create_task(flusher.run(flush))
    await asyncio.sleep(10)  # quiet: nothing is flushed without a poke
    assert not flushed.is_set()
    start = now()
    flusher.poke()
    await flushed.wait()
    assert now() - start == pytest.approx(COALESCE)
    job.cancel()


async def test_a_failing_flush_ends_the_run() -> None:
    flusher = Flusher()

    async def flush() -> None:
        raise ConnectionError("session lost")

    flusher.poke()
    with pytest.raises(ConnectionError):
        await flusher.run(flush)
