"""The shared flusher: a burst travels together, a lone change does not wait.

Loop time is virtual (``looptime``): the windows are the real ones and take no
real time.
"""

from __future__ import annotations

import asyncio

import pytest

from shoal.batching import COALESCE, HOLD, QUIET, WINDOW, Flusher, KeyedFlusher

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


def keyed() -> tuple[KeyedFlusher[str], list[tuple[float, list[str]]], asyncio.Task[None]]:
    """A running KeyedFlusher and what it flushed: (loop time, keys) per flush."""
    flusher: KeyedFlusher[str] = KeyedFlusher()
    sent: list[tuple[float, list[str]]] = []

    async def flush(keys: list[str]) -> None:
        sent.append((now(), keys))

    return flusher, sent, asyncio.create_task(flusher.run(flush))


async def test_a_keyed_flusher_sends_a_lone_key_at_once() -> None:
    flusher, sent, job = keyed()
    await asyncio.sleep(10)
    start = now()
    flusher.poke("n1")
    flusher.poke("n2")
    await asyncio.sleep(1)
    assert sent == [(pytest.approx(start + COALESCE), ["n1", "n2"])]
    job.cancel()


async def test_a_keyed_flusher_holds_a_busy_key_and_sends_all_once_the_changes_stop() -> None:
    flusher, sent, job = keyed()
    start = now()
    # Two seconds of a change every 20 ms, alternating between two keys (a long apply).
    for step in range(100):
        flusher.poke(f"n{step % 2}")
        stopped = now()
        await asyncio.sleep(0.02)
    await asyncio.sleep(1)
    times = [at for at, _ in sent]
    # Each key: once at once, then at most once per HOLD, then once when the pokes stop.
    assert sum("n0" in keys for _, keys in sent) <= 2 + (stopped - start) / HOLD
    assert len(sent) < 12  # a flusher per moment: 100
    assert times[0] == pytest.approx(start + COALESCE)
    assert "n0" in sent[-1][1] and "n1" in sent[-1][1]
    assert stopped + QUIET <= times[-1] <= stopped + QUIET + 2 * COALESCE
    job.cancel()


async def test_a_key_held_never_waits_longer_than_the_hold() -> None:
    flusher, sent, job = keyed()
    flusher.poke("busy")
    for _ in range(10):  # other keys keep the stream going: never quiet
        flusher.poke("other")
        await asyncio.sleep(0.01)
    flusher.poke("busy")  # held: it was flushed 0.1 s ago, and changes keep coming
    poked = now()
    for _ in range(150):
        flusher.poke("other")
        await asyncio.sleep(0.01)
    flushed = [at for at, keys in sent if "busy" in keys]
    assert len(flushed) == 2
    assert flushed[1] - poked == pytest.approx(HOLD, abs=2 * COALESCE)
    job.cancel()


async def test_a_forgotten_key_is_not_flushed() -> None:
    flusher, sent, job = keyed()
    flusher.poke("gone")
    flusher.poke("kept")
    flusher.forget("gone")
    await asyncio.sleep(1)
    assert [keys for _, keys in sent] == [["kept"]]
    job.cancel()


async def test_a_key_flushed_a_moment_ago_goes_at_once_after_a_quiet_time() -> None:
    flusher, sent, job = keyed()
    flusher.poke("n1")
    await asyncio.sleep(QUIET * 2)  # flushed, then nothing anywhere for a while
    assert len(sent) == 1
    poked = now()
    flusher.poke("n1")  # one apply after another on one node: not a burst
    await asyncio.sleep(1)
    assert [at for at, _ in sent][1:] == [pytest.approx(poked + COALESCE)]
    job.cancel()
