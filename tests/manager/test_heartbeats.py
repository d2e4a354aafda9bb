"""Heartbeats are heard while the manager's event loop is held.

A real manager (memory store, in this process) and a real agent (a
subprocess). The test then holds the manager's event loop for longer than the
agent tolerates failing heartbeats, as one long reconcile pass would. The
heartbeats go to the manager's heartbeat listener, on threads of their own,
so the agent's session survives: it does not register again (the node's
stored registration is the same one) and the node stays ready.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from shoal.manager.server import ManagerSettings, open_manager
from shoal.models import NodeState

PERIOD = 0.5  # the agent gives up a session after 3 heartbeats of 1.5 s fail


async def test_a_held_event_loop_does_not_cost_the_agents_their_sessions(tmp_path: Path) -> None:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
        heartbeat_period=PERIOD,
    )
    async with open_manager(settings) as manager:
        agent = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "shoal",
                "agent",
                "--manager",
                manager.address,
                "--join",
                manager.join_address,
                "--token",
                manager.security.state.tokens["worker"],
                "--name",
                "hb",
                "--sim-nodes",
                "1",
                "--state-dir",
                str(tmp_path / "agent"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(400):
                entry = manager.informer.nodes.get("hb-0")
                if entry is not None and entry.obj.status.state == NodeState.READY:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the agent never registered")
            await asyncio.sleep(3 * PERIOD)
            registered = manager.informer.nodes["hb-0"].obj.status

            time.sleep(8 * PERIOD * 2)  # noqa: ASYNC251 -- a pass holding the loop for 8 s

            await asyncio.sleep(4 * PERIOD)
            kvs, _ = await manager.store.range("/nodes/")
            assert len(kvs) == 1
            entry = manager.informer.nodes["hb-0"]
            assert entry.obj.status == registered  # never registered again, never down
            assert manager.heartbeats.silent_for("hb-0") < 3 * PERIOD
        finally:
            agent.terminate()
            await agent.wait()
