"""Heartbeats travel on the agent's session, and a stalled manager blames nobody.

A real manager (memory store, in this process) and real agents (a
subprocess, or raw gRPC calls for an agent of an older version). A node holds
one connection to the manager: its heartbeats ride on the session stream
(each mutual-TLS connection costs the manager about 95 KB, so two per node
was most of its memory with a thousand nodes).

The manager's event loop is then held, as one long pass would hold it: for
less than the agent's patience the session survives (the node is not even
registered again); for longer, the agent may register again, but the node is
never declared down, because the node monitor measures silence on the awake
clock, which leaves the manager's own stalls out.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest

from shoal.api.transport import DISPATCHER_SERVICE
from shoal.manager.server import Manager, ManagerSettings, open_manager
from shoal.models import NodeDescription, NodeState
from shoal.security.ca import MANAGER_NAME
from shoal.security.credentials import TlsIdentity

PERIOD = 0.5  # the agent leaves a manager that answers no heartbeat for 12 periods: 6 s


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Manager]:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
        heartbeat_period=PERIOD,
    )
    async with open_manager(settings) as manager:
        yield manager


async def _agent(manager: Manager, state_dir: Path, nodes: int) -> asyncio.subprocess.Process:
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
            str(nodes),
            "--state-dir",
            str(state_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(400):
        ready = [
            e for e in manager.informer.nodes.values() if e.obj.status.state == NodeState.READY
        ]
        if len(ready) == nodes:
            return agent
        await asyncio.sleep(0.05)
    agent.terminate()
    raise AssertionError("the agent's nodes never all registered")


def _established(pid: int) -> int:
    """TCP connections of process ``pid`` that are established (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                    count += 1
    return count


async def test_a_manager_leaves_the_collector_to_its_process(tmp_path: Path) -> None:
    # shoal.gcpolicy is the daemons' (shoal manager, shoal up): a manager opened in a
    # process that runs others (tests, an embedding program) changes no threshold
    # and freezes nothing.
    before = gc.get_threshold(), gc.get_freeze_count()
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
    )
    async with open_manager(settings):
        assert (gc.get_threshold(), gc.get_freeze_count()) == before
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


async def test_each_node_holds_one_connection_to_the_manager(
    manager: Manager, tmp_path: Path
) -> None:
    agent = await _agent(manager, tmp_path / "agent", nodes=3)
    try:
        await asyncio.sleep(4 * PERIOD)  # heartbeats flowing
        assert _established(agent.pid) == 3
        for node in ("hb-0", "hb-1", "hb-2"):
            assert manager.heartbeats.silent_for(node) < 3 * PERIOD
    finally:
        agent.terminate()
        await agent.wait()


async def test_a_held_event_loop_blames_no_node(manager: Manager, tmp_path: Path) -> None:
    agent = await _agent(manager, tmp_path / "agent", nodes=1)
    try:
        await asyncio.sleep(3 * PERIOD)
        registered = manager.informer.nodes["hb-0"].obj.status

        time.sleep(6 * PERIOD)  # noqa: ASYNC251 -- a pass holding the loop for 3 s
        await asyncio.sleep(4 * PERIOD)
        assert manager.informer.nodes["hb-0"].obj.status == registered  # the same session
        assert manager.heartbeats.silent_for("hb-0") < 3 * PERIOD

        time.sleep(16 * PERIOD)  # noqa: ASYNC251 -- 8 s: longer than the agent waits
        for _ in range(100):  # the agent may have registered again meanwhile
            await asyncio.sleep(0.1)
            if manager.heartbeats.silent_for("hb-0") < PERIOD:
                break
        assert manager.informer.nodes["hb-0"].obj.status.state == NodeState.READY
        downs = [e for e in manager.events.for_object("node/hb-0") if e.reason == "NodeDown"]
        assert downs == []
        assert manager.heartbeats.longest_stall > 7
    finally:
        agent.terminate()
        await agent.wait()


def _old_agent(address: str, tls: TlsIdentity, beats: int) -> tuple[dict[str, object], list[str]]:
    """An agent of the version before heartbeats on the session: it registers with a
    one-message stream and sends ``Heartbeat`` calls on the same channel."""
    credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
    options = [("grpc.ssl_target_name_override", MANAGER_NAME)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        session = channel.unary_stream(
            f"/{DISPATCHER_SERVICE}/Session",
            request_serializer=orjson.dumps,
            response_deserializer=orjson.loads,
        )(
            {
                "nodeId": "old",
                "description": NodeDescription(hostname="old").to_wire(),
                "catalog": False,
            }
        )
        first = next(session)
        beat = channel.unary_unary(
            f"/{DISPATCHER_SERVICE}/Heartbeat",
            request_serializer=orjson.dumps,
            response_deserializer=orjson.loads,
        )
        answers = []
        for _ in range(beats):
            time.sleep(PERIOD)
            reply = beat({"nodeId": "old", "sessionId": first["sessionId"]}, timeout=5)
            answers.append(str(reply["heartbeatPeriod"]))
        session.cancel()
    return first, answers


async def test_an_older_agent_heartbeats_with_calls(manager: Manager) -> None:
    tls = await manager.security.local_node("old")
    # 8 heartbeats, 4 s: a node unheard for 1.5 s would be declared down meanwhile.
    first, answers = await asyncio.to_thread(_old_agent, manager.address, tls, 8)
    assert first["type"] == "session"
    assert answers == [str(PERIOD)] * 8
    assert manager.informer.nodes["old"].obj.status.state == NodeState.READY
    assert manager.heartbeats.silent_for("old") < 3 * PERIOD
