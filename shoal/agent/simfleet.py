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

Each node has a certificate of its own (CN = its name), as a real node does.
Joining them one by one would cost two TLS handshakes and a CA check per node;
the fleet instead joins every node that has no certificate yet in one go
(``shoal.security.enroll.join_many``): one CA check, one channel, each node's
own key and certificate request multiplexed on it. A node that could not be
joined that way (refused, manager away) joins by itself as any agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import structlog

from shoal.agent.agent import Agent, AgentSettings
from shoal.agent.discovery import DnsSettings
from shoal.errors import ApiError, AuthError
from shoal.security.credentials import IDENTITY_DIR, TlsIdentity
from shoal.security.enroll import join_many

log = structlog.get_logger(__name__)

WAVE = 50
# How long a wave may take to register before the next one starts anyway.
WAVE_WAIT = 5.0


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
                # One process, many nodes: no DNS listeners (they would share addresses).
                dns=DnsSettings(listen=None, containers="off"),
                catalog=False,  # simulated work resolves nothing: spare the managers
            )
        )
    return settings


class SimFleet:
    """N agents with the ``sim`` runtime; see the module docstring."""

    def __init__(self, base: AgentSettings, count: int) -> None:
        if count < 1:
            raise ValueError("--sim-nodes must be at least 1")
        self.agents = [Agent(s) for s in fleet_settings(base, count)]

    async def _join_all(self) -> None:
        """Certificates for every node without a valid one, in one go (module docstring)."""
        unjoined = []
        for agent in self.agents:
            saved = agent.identity or TlsIdentity.load(agent.settings.state_dir / IDENTITY_DIR)
            if saved is None or saved.expired():
                unjoined.append(agent)
        if not unjoined or not unjoined[0].settings.token:
            return
        first = unjoined[0].settings
        try:
            joined = await join_many(
                first.join_address, first.token, [a.settings.name for a in unjoined]
            )
        except (AuthError, ApiError) as exc:  # each agent then joins, and says why, itself
            log.warning("simfleet.join_failed", error=str(exc))
            return
        for agent in unjoined:
            identity = joined.get(agent.settings.name)
            if isinstance(identity, TlsIdentity):
                identity.save(agent.settings.state_dir / IDENTITY_DIR)
                agent.identity = identity
        log.info("simfleet.joined", nodes=sum(isinstance(i, TlsIdentity) for i in joined.values()))

    async def start(self) -> None:
        await self._join_all()
        for first in range(0, len(self.agents), WAVE):
            wave = self.agents[first : first + WAVE]
            await asyncio.gather(*(a.start() for a in wave))
            # The next wave starts once this one has its sessions (or after a while):
            # at most a wave registers at a time, within the manager's admission.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAVE_WAIT):
                    await asyncio.gather(*(a.connected.wait() for a in wave))
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
