"""Many simulated nodes in one process: ``shoal agent --sim-nodes N``.

Each simulated node is a complete ``Agent`` with its own name, state
directory, gRPC session, heartbeats, assignments and status reports; only its
runtimes are limited to ``sim``, so its tasks cost a few objects instead of a
process. To the manager the fleet is indistinguishable from N real agents,
which is what a control-plane scale test needs: the manager's work (sessions,
scheduling, status writes) is real, the nodes' work is not.

Node ``i`` of a fleet named ``NAME`` is ``NAME-i`` (zero-padded), with state
under ``STATE_DIR/NAME-i``. Agents start in waves so that registering a
thousand nodes does not arrive as one thundering herd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from collections.abc import AsyncIterator

import structlog

from shoal.agent.agent import Agent, AgentSettings

log = structlog.get_logger(__name__)

WAVE = 50


def fleet_settings(base: AgentSettings, count: int) -> list[AgentSettings]:
    width = len(str(count - 1))
    settings = []
    for index in range(count):
        name = f"{base.name}-{index:0{width}d}"
        settings.append(
            dataclasses.replace(
                base,
                name=name,
                hostname=name,
                state_dir=base.state_dir / name,
                runtimes=frozenset({"sim"}),
                metrics_listen=None,
            )
        )
    return settings


class SimFleet:
    """N agents with the ``sim`` runtime; see the module docstring."""

    def __init__(self, base: AgentSettings, count: int) -> None:
        if count < 1:
            raise ValueError("--sim-nodes must be at least 1")
        self.agents = [Agent(s) for s in fleet_settings(base, count)]

    async def start(self) -> None:
        for first in range(0, len(self.agents), WAVE):
            await asyncio.gather(*(a.start() for a in self.agents[first : first + WAVE]))
        # A thousand agents are a lot of long-lived objects; without this every
        # full collection would walk all of them again, and that shows up as
        # latency on every node at once.
        gc.freeze()
        log.info("simfleet.started", nodes=len(self.agents))

    async def wait(self) -> BaseException | None:
        """Return when any agent stops for good, with its fatal error (e.g. token refused)."""
        waits = [asyncio.ensure_future(a.wait()) for a in self.agents]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return next((a.fatal for a in self.agents if a.fatal), None)

    async def aclose(self) -> None:
        await asyncio.gather(*(a.aclose() for a in self.agents), return_exceptions=True)


@contextlib.asynccontextmanager
async def open_sim_fleet(base: AgentSettings, count: int) -> AsyncIterator[SimFleet]:
    fleet = SimFleet(base, count)
    try:
        await fleet.start()
        yield fleet
    finally:
        await fleet.aclose()
