"""The agent's heartbeats on its session stream, on their own (virtual time).

A manager that counts status batches as heartbeats (``beatsOnStatus``) is sent
no heartbeat within a period after a batch, and never goes a period without
one or the other; the agent still leaves a manager it has heard nothing from
for ``HEARTBEAT_PATIENCE`` periods, however many batches it keeps sending.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.agent import HEARTBEAT_PATIENCE, Agent, AgentSettings, _Heard
from shoal.agent.reporter import StreamSender

pytestmark = pytest.mark.looptime

PERIOD = 1.0


class Stream:
    """The sending end of a session stream: what went when; batches answered at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []
        self.sender = StreamSender(self)  # type: ignore[arg-type]

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append((asyncio.get_running_loop().time(), str(message["type"])))
        if message["type"] == "status":
            batch = {"type": "status", "batch": message["batch"]}
            asyncio.get_running_loop().call_soon(self.sender.answered, batch)


def agent(tmp_path: Path) -> Agent:
    return Agent(AgentSettings(managers=["127.0.0.1:1"], token="", state_dir=tmp_path, name="n1"))


async def batches(stream: Stream, every: float, until: float) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        await stream.sender([])
        await asyncio.sleep(every)


async def test_status_batches_stand_in_for_heartbeats(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = Stream()
    heard = _Heard(start, PERIOD)
    beating = asyncio.create_task(
        agent(tmp_path)._stream_heartbeats(stream, heard, stream.sender)  # type: ignore[arg-type]
    )
    await batches(stream, 0.4 * PERIOD, start + 5 * PERIOD)  # 5 periods of batches
    heard.at = loop.time()
    await asyncio.sleep(5 * PERIOD)  # then 5 quiet ones
    beating.cancel()
    beats = [at - start for at, kind in stream.sent if kind == "heartbeat"]
    assert beats and min(beats) >= 5 * PERIOD, beats
    assert len(beats) >= 4
    # Never a period without a message the manager counts.
    times = [start] + [at for at, _ in stream.sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= PERIOD + 0.01, gaps


async def test_every_period_beats_when_the_manager_does_not_count_batches(
    tmp_path: Path,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = Stream()
    heard = _Heard(start, PERIOD)
    beating = asyncio.create_task(agent(tmp_path)._stream_heartbeats(stream, heard))  # type: ignore[arg-type]
    await batches(stream, 0.4 * PERIOD, start + 5 * PERIOD)
    beating.cancel()
    beats = [at - start for at, kind in stream.sent if kind == "heartbeat"]
    assert len(beats) >= 4, beats


async def test_a_silent_manager_is_left_while_batches_keep_going(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = Stream()
    heard = _Heard(start, PERIOD)  # nothing heard after this
    beating = asyncio.create_task(
        agent(tmp_path)._stream_heartbeats(stream, heard, stream.sender)  # type: ignore[arg-type]
    )
    sending = asyncio.create_task(batches(stream, 0.4 * PERIOD, start + 100 * PERIOD))
    await asyncio.wait_for(beating, (HEARTBEAT_PATIENCE + 2) * PERIOD)
    assert loop.time() - start >= HEARTBEAT_PATIENCE * PERIOD
    sending.cancel()
