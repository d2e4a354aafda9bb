"""Cluster identity end to end: real managers and agents, real gRPC over TLS.

Who may connect (mutual TLS only), who may call what (admin, viewer, node
certificates), joining (token pinned to the CA, a name held by another node),
removing a node, and certificates renewed while everything keeps running.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from shoal.api.transport import CONTROL_SERVICE, DISPATCHER_SERVICE, Client, open_channel
from shoal.errors import ApiError
from shoal.security.ca import read_cert
from shoal.security.credentials import TlsIdentity
from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    shoal_cmd,
    task_processes,
    tasks_in_process_table,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        running.start_agent("n1", "zone=a")
        running.start_agent("n2", "zone=b")
        yield running


def call_with(
    address: str, tls: Any, method: str, request: dict[str, Any], service: str = CONTROL_SERVICE
) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        channel = open_channel(address, tls)
        try:
            return await Client(channel, service).call(method, request, timeout=5)
        finally:
            await channel.close()

    return asyncio.run(go())


def refused_code(address: str, tls: Any, method: str, request: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(ApiError) as caught:
        call_with(address, tls, method, request, **kw)
    return caught.value.code


def node_identity(cluster: Cluster, name: str) -> TlsIdentity:
    identity = TlsIdentity.load(cluster.root / "agents" / name / "identity")
    assert identity is not None
    return identity


def audit(cluster: Cluster) -> list[dict[str, Any]]:
    path = cluster.root / "manager" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------ transport


def test_plaintext_and_certificateless_clients_are_refused(cluster: Cluster) -> None:
    async def attempts() -> tuple[str, str]:
        codes = []
        plain = grpc.aio.insecure_channel(cluster.address)
        no_cert = grpc.aio.secure_channel(
            cluster.address,
            grpc.ssl_channel_credentials(root_certificates=cluster.credentials.ca_pem),
            options=[("grpc.ssl_target_name_override", "shoal-manager")],
        )
        for channel in (plain, no_cert):
            try:
                await Client(channel, CONTROL_SERVICE).call("Get", {"kind": "nodes"}, timeout=5)
                codes.append("OK")
            except ApiError as exc:
                codes.append(exc.code)
            finally:
                await channel.close()
        return codes[0], codes[1]

    assert asyncio.run(attempts()) == ("UNAVAILABLE", "UNAVAILABLE")
    # The same call with the admin bundle works: the refusals were about credentials.
    assert (
        len(call_with(cluster.address, cluster.credentials, "Get", {"kind": "nodes"})["items"]) == 2
    )


def test_join_listener_serves_nothing_but_joining(cluster: Cluster) -> None:
    async def attempt() -> str:
        channel = grpc.aio.secure_channel(
            cluster.join_address,
            grpc.ssl_channel_credentials(root_certificates=cluster.credentials.ca_pem),
            options=[("grpc.ssl_target_name_override", "shoal-ca")],
        )
        try:
            await Client(channel, CONTROL_SERVICE).call("Get", {"kind": "nodes"}, timeout=5)
        except ApiError as exc:
            return exc.code
        finally:
            await channel.close()
        return "OK"

    assert asyncio.run(attempt()) == "UNIMPLEMENTED"


# ------------------------------------------------------------------ roles


def test_viewer_reads_and_is_refused_writes(cluster: Cluster, tmp_path: Path) -> None:
    bundle = tmp_path / "bob.yaml"
    cluster.cli("user", "add", "bob", "--role", "viewer", "-o", str(bundle))
    assert stat.S_IMODE(os.stat(bundle).st_mode) == 0o600
    env = {**cluster.cli_env(), "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    env.pop("SHOAL_STATE_DIR")
    env["XDG_STATE_HOME"] = str(tmp_path / "nothing-here")

    def as_bob(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shoal_cmd(*args), env=env, capture_output=True, text=True, timeout=60, input=stdin
        )

    assert as_bob("context", "import", str(bundle), "--name", "bob").returncode == 0
    listed = as_bob("get", "nodes", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert {n["id"] for n in json.loads(listed.stdout)["items"]} == {"n1", "n2"}

    spec = cluster.service("sec-viewer", ["sleep", "300"])
    refused = as_bob("apply", "-f", "-", stdin=spec)
    assert refused.returncode == 1
    assert "role viewer, which may only read" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cluster.try_call("Get", {"kind": "services", "name": "sec-viewer"}) is None
    assert as_bob("token", "worker").returncode == 1

    viewer = TlsIdentityFromBundle(bundle)
    assert refused_code(cluster.address, viewer, "Apply", {"services": []}) == "PERMISSION_DENIED"
    entries = [e for e in audit(cluster) if e["method"] == "Apply" and e["user"] == "bob"]
    assert entries and all(e["outcome"] == "PERMISSION_DENIED" for e in entries)
    refusals = json.loads(cluster.cli("events", "--object", "call/Apply", "-o", "json").stdout)
    assert any(
        e["reason"] == "PermissionDenied" and e["type"] == "Warning" and "bob" in e["message"]
        for e in refusals["items"]
    )
    added = [e for e in audit(cluster) if e["method"] == "UserAdd"]
    assert added[-1]["user"] == "admin" and added[-1]["outcome"] == "OK"

    # Removing bob revokes his certificate: even reads are refused from then on.
    cluster.cli("user", "rm", "bob")
    assert as_bob("get", "nodes").returncode == 1
    assert refused_code(cluster.address, viewer, "Get", {"kind": "nodes"}) == "PERMISSION_DENIED"
    users = json.loads(cluster.cli("user", "ls", "-o", "json").stdout)["items"]
    assert [u["name"] for u in users] == ["admin"]


def TlsIdentityFromBundle(path: Path) -> Any:
    from shoal.security.contexts import load_bundle

    return load_bundle(path)


def test_node_certificate_is_refused_by_control(cluster: Cluster) -> None:
    worker = node_identity(cluster, "n1")
    assert read_cert(worker.cert_pem).role == "worker"
    for name in ("cert.pem", "key.pem", "ca.pem"):
        mode = os.stat(cluster.root / "agents" / "n1" / "identity" / name).st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert refused_code(cluster.address, worker, "Get", {"kind": "nodes"}) == "PERMISSION_DENIED"
    # And a user certificate is refused by the Dispatcher.
    request = {"nodeId": "n1", "sessionId": "x"}
    code = refused_code(
        cluster.address, cluster.credentials, "Heartbeat", request, service=DISPATCHER_SERVICE
    )
    assert code == "PERMISSION_DENIED"


# ---------------------------------------------------------------- joining


def test_agent_cannot_speak_for_another_node(cluster: Cluster) -> None:
    n1 = node_identity(cluster, "n1")
    request = {"nodeId": "n2", "sessionId": "guess"}
    code = refused_code(cluster.address, n1, "Heartbeat", request, service=DISPATCHER_SERVICE)
    assert code == "PERMISSION_DENIED"

    async def session_as_n2() -> str:
        channel = open_channel(cluster.address, n1)
        try:
            stream = Client(channel, DISPATCHER_SERVICE).stream(
                "Session", {"nodeId": "n2", "description": {}}, timeout=5
            )
            async for _ in stream:
                return "OK"
        except ApiError as exc:
            return exc.code
        finally:
            await channel.close()
        return "ended"

    assert asyncio.run(session_as_n2()) == "PERMISSION_DENIED"

    # With a valid token, joining under a name another node holds is refused too.
    result = subprocess.run(
        shoal_cmd(
            "agent",
            "--manager",
            cluster.address,
            "--join",
            cluster.join_address,
            "--name",
            "n2",
            "--state-dir",
            str(cluster.root / "agents" / "n2-impostor"),
        ),
        env={**os.environ, "SHOAL_TOKEN": cluster.token},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot take another node's name" in result.stderr
    assert not (cluster.root / "agents" / "n2-impostor" / "identity" / "cert.pem").exists()
    # n2 itself is undisturbed.
    assert cluster.node_state("n2") == "ready"


def test_token_of_another_cluster_is_refused_before_anything_is_sent(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with cluster_at(tmp_path_factory.mktemp("other-cluster")) as other:
        assert other.token.split("-")[2] != cluster.token.split("-")[2]
        token_file = cluster.root / "other.token"
        token_file.write_text(other.token + "\n")
        result = subprocess.run(
            shoal_cmd(
                "agent",
                "--manager",
                cluster.address,
                "--join",
                cluster.join_address,
                "--token-file",
                str(token_file),
                "--name",
                "sec-stranger",
                "--state-dir",
                str(cluster.root / "agents" / "sec-stranger"),
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert other.node_state("sec-stranger") is None
    assert result.returncode == 1
    assert "refusing to join" in result.stderr
    assert cluster.node_state("sec-stranger") is None


def test_rotated_token_stops_new_joins_only(cluster: Cluster) -> None:
    old = cluster.token
    new = cluster.cli("token", "worker", "--rotate").stdout.strip()
    assert new != old and new.split("-")[2] == old.split("-")[2]
    assert cluster.cli("token", "worker").stdout.strip() == new
    refused = subprocess.run(
        [*cluster_agent_args(cluster, "sec-late"), "--token", old],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 1 and "join token refused" in refused.stderr
    # Joined nodes keep working: n1 still heartbeats and runs new work.
    cluster.token = new
    cluster.start_agent("sec-late")
    cluster.apply(cluster.service("sec-rotate", ["sleep", "300"], replicas=3))
    cluster.wait_running("sec-rotate", 3)
    assert cluster.node_state("n1") == "ready"


def cluster_agent_args(cluster: Cluster, name: str) -> list[str]:
    return shoal_cmd(
        "agent",
        "--manager",
        cluster.address,
        "--join",
        cluster.join_address,
        "--name",
        name,
        "--state-dir",
        str(cluster.root / "agents" / name),
    )


# --------------------------------------------------------------- node rm


def test_node_rm_revokes_and_reschedules(cluster: Cluster) -> None:
    cluster.apply(cluster.service("sec-rm", ["sleep", "300"], replicas=2))
    running = cluster.wait_running("sec-rm", 2)  # spread: one task on each node
    on_n1 = [t["id"] for t in running if t["nodeId"] == "n1"]
    assert len(on_n1) == 1
    n1 = node_identity(cluster, "n1")

    refused = cluster.cli("node", "rm", "n1", check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr
    cluster.cli("node", "rm", "n1", "--force")

    # Its agent is refused at its next call and exits; what it ran moved to n2.
    agent = cluster.agents["n1"]
    assert agent.proc is not None
    agent.proc.wait(15)
    assert agent.proc.returncode == 1
    assert (
        refused_code(
            cluster.address,
            n1,
            "Heartbeat",
            {"nodeId": "n1", "sessionId": "x"},
            service=DISPATCHER_SERVICE,
        )
        == "PERMISSION_DENIED"
    )
    assert cluster.node_state("n1") is None
    wait_for(
        lambda: sorted(t["nodeId"] for t in cluster.running("sec-rm")) == ["n2", "n2"],
        20,
        "both tasks on n2",
    )
    wait_for(
        lambda: all(env["SHOAL_NODE"] == "n2" for env in task_processes("sec-rm").values()),
        20,
        "the removed node's process to stop",
    )
    # Two tasks live, both on n2 (each task is its shell wrapper and the command).
    assert len(tasks_in_process_table("sec-rm")) == 2


# ---------------------------------------------------------------- renewal


def test_short_certificates_are_renewed_without_losing_anything(tmp_path: Path) -> None:
    with cluster_at(tmp_path, manager_args=("--cert-expiry", "30s")) as cluster:
        cluster.start_agent("r1")
        cluster.apply(cluster.service("sec-renew", ["sleep", "600"], replicas=2))
        before = {t["id"]: t["status"]["pid"] for t in cluster.wait_running("sec-renew", 2)}
        identity_dir = cluster.root / "agents" / "r1" / "identity"
        serials: list[int] = []
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            info = read_cert((identity_dir / "cert.pem").read_bytes())
            if not serials or serials[-1] != info.serial:
                serials.append(info.serial)
                assert info.lifetime.total_seconds() == pytest.approx(30, abs=2)
            time.sleep(1)
        # 75 s of 30 s certificates renewed at 15-24 s: at least three renewals.
        assert len(serials) >= 4
        after = {t["id"]: t["status"]["pid"] for t in cluster.running("sec-renew")}
        assert after == before
        # The same processes (each task's wrapper, whose pid the task reports) still run.
        assert set(before.values()) <= set(task_processes("sec-renew"))
        assert tasks_in_process_table("sec-renew") == set(before)
        # One registration in all that time: the session was never lost.
        events = cluster.call("Describe", {"kind": "nodes", "name": "r1"})["events"]
        assert [e["reason"] for e in events].count("NodeReady") == 1
        # New connections still work: the manager's own certificate was renewed too.
        assert cluster.node_state("r1") == "ready"


# ---------------------------------------------------------------- failover


def test_cli_moves_past_a_manager_that_does_not_answer(cluster: Cluster) -> None:
    # A listener that accepts connections and never speaks, as a paused (SIGSTOP) manager does.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        ok = subprocess.run(
            shoal_cmd("get", "nodes", "-o", "json", "--server", f"{dead},{cluster.address}"),
            capture_output=True,
            text=True,
            timeout=60,
            env=cluster.cli_env(),
        )
        assert ok.returncode == 0, ok.stderr
        assert {n["id"] for n in json.loads(ok.stdout)["items"]} == {"n1", "n2"}
        refused = subprocess.run(
            shoal_cmd("get", "nodes", "--server", f"{dead},127.0.0.1:1"),
            capture_output=True,
            text=True,
            timeout=60,
            env=cluster.cli_env(),
        )
    assert refused.returncode == 1
    assert f"tried {dead} (no answer within 3s: down, paused or unreachable)" in refused.stderr
    assert "127.0.0.1:1 (connection refused" in refused.stderr
