"""Heartbeats are heard while the manager's event loop is held.

A real manager (memory store, in this process) and a real agent (a
subprocess). The test then holds the manager's event loop for longer than the
agent tolerates failing heartbeats, as one long reconcile pass would. The
heartbeats go to the manager's heartbeat listener, on threads of their own,
so the agent's session survives: it does not register again (the node's
stored registration is the same one) and the node stays ready.

The listener is mutual TLS and speaks only to the node a certificate names.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import orjson

from shoal.api.transport import DISPATCHER_SERVICE
from shoal.manager.server import ManagerSettings, open_manager
from shoal.models import NodeState
from shoal.security.ca import MANAGER_NAME
from shoal.security.contexts import load_bundle
from shoal.security.credentials import TlsIdentity

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


def _beat(address: str, tls: TlsIdentity | None, node_id: str) -> str:
    """The status code of one heartbeat sent to the heartbeat listener."""
    if tls is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem),
            options=[("grpc.ssl_target_name_override", MANAGER_NAME)],
        )
    with channel:
        stub = channel.unary_unary(
            f"/{DISPATCHER_SERVICE}/Heartbeat",
            request_serializer=orjson.dumps,
            response_deserializer=orjson.loads,
        )
        try:
            stub({"nodeId": node_id, "sessionId": "none"}, timeout=5)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "OK"


async def test_the_heartbeat_listener_wants_the_nodes_own_certificate(tmp_path: Path) -> None:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
    )
    async with open_manager(settings) as manager:
        address = manager.heartbeat_address
        assert address is not None
        n1 = await manager.security.local_node("n1")
        admin = load_bundle(manager.admin_bundle)

        def codes() -> dict[str, str]:
            return {
                "plaintext": _beat(address, None, "n1"),
                "own name, no session": _beat(address, n1, "n1"),
                "another node's name": _beat(address, n1, "n2"),
                "user certificate": _beat(address, admin, "n1"),
            }

        assert await asyncio.to_thread(codes) == {
            "plaintext": "UNAVAILABLE",
            "own name, no session": "FAILED_PRECONDITION",  # authorized; must register first
            "another node's name": "PERMISSION_DENIED",
            "user certificate": "PERMISSION_DENIED",
        }
        await manager.security.state.remove("node", "n1")
        assert await asyncio.to_thread(_beat, address, n1, "n1") == "PERMISSION_DENIED"
