"""Dynamic ports and the endpoint catalog end to end: real manager, agent, processes, Docker.

Three replicas of ``python3 -m http.server`` share one node on ports the agent
picked; each answers HTTP on the address its node advertises, the ports show in
``get tasks -o wide`` and ``shoal endpoints`` lists exactly those tasks. A
replica killed by hand leaves the list and its replacement joins. A Docker
container with ``published: 0`` is reachable on the port the agent recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.api.transport import CONTROL_SERVICE, Client, open_channel
from tests.e2e import cluster as cluster_module
from tests.e2e.cluster import Cluster, cluster_at, shoal_cmd, wait_for
from tests.engines import TEST_IMAGE, ensure_test_image, remove_node_containers

pytestmark = pytest.mark.slow

ADDRESS = "127.0.0.2"  # the agent's --advertise-address: loopback, distinct from the manager's
RANGE = "31000-31999"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        yield running


def http_get(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as reply:
        return str(reply.read().decode())


def endpoints(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    """The service's endpoints as a manager lists them (the first item of the stream)."""

    async def first() -> list[dict[str, Any]]:
        channel = open_channel(cluster.address, cluster.credentials)
        try:
            async for item in Client(channel, CONTROL_SERVICE).stream(
                "Endpoints", {"service": service}
            ):
                return list(item["endpoints"])
        finally:
            await channel.close()
        raise AssertionError("the Endpoints stream ended without an item")

    return asyncio.run(first())


def by_task(tasks: list[dict[str, Any]]) -> dict[str, int]:
    return {t["id"]: t["status"]["ports"][0]["port"] for t in tasks}


def test_process_replicas_on_dynamic_ports_are_listed_as_endpoints(cluster: Cluster) -> None:
    cluster.start_agent("n1", extra_args=["--advertise-address", ADDRESS, "--port-range", RANGE])
    node = cluster.call("Get", {"kind": "nodes"})["items"][0]
    assert node["status"]["advertiseAddress"] == ADDRESS
    cluster.apply(
        cluster.service(
            "web",
            ["sh", "-c", 'exec python3 -m http.server "$PORT"'],
            replicas=3,
            template={"ports": [{"name": "http"}], "stopGracePeriod": "1s"},
            restartPolicy={"condition": "any", "delay": "200ms"},
        )
    )
    tasks = cluster.wait_running("web", 3)
    ports = by_task(tasks)
    assert len(set(ports.values())) == 3  # three listeners on one node
    assert all(31000 <= port <= 31999 for port in ports.values())
    for port in ports.values():  # each one serves, at the address the node advertises
        wait_for(lambda port=port: _serves(ADDRESS, port), 10, f"a server on {port}")
    wide = cluster.cli("get", "tasks", "-o", "wide").stdout
    for port in ports.values():
        assert f"http={port}/tcp" in wide
    listed = json.loads(cluster.cli("endpoints", "web", "-o", "json").stdout)
    assert listed["service"] == "web"
    assert {(e["taskId"], e["address"], e["ports"][0]["port"]) for e in listed["endpoints"]} == {
        (task_id, ADDRESS, port) for task_id, port in ports.items()
    }
    missing = cluster.cli("endpoints", "nope", check=False)
    assert missing.returncode == 1 and "service 'nope' not found" in missing.stderr

    # A replica killed by hand leaves the list; its replacement joins it.
    victim = next(t for t in tasks if t["slot"] == 2)
    os.kill(int(victim["status"]["pid"]), signal.SIGKILL)
    wait_for(
        lambda: victim["id"] not in {e["taskId"] for e in endpoints(cluster, "web")},
        10,
        "the killed replica to leave the endpoints",
    )
    wait_for(lambda: len(endpoints(cluster, "web")) == 3, 20, "its replacement to join")
    now = {e["taskId"]: e["ports"][0]["port"] for e in endpoints(cluster, "web")}
    replacement = next(t for t in cluster.running("web") if t["slot"] == 2)
    assert replacement["id"] != victim["id"] and replacement["id"] in now
    assert set(now) == {t["id"] for t in cluster.running("web")}
    wait_for(lambda: _serves(ADDRESS, now[replacement["id"]]), 10, "the replacement to serve")

    # -w prints the list, then the list again when it changes.
    watch = subprocess.Popen(
        shoal_cmd("endpoints", "web", "-w", "-o", "json", "--server", cluster.address),
        stdout=subprocess.PIPE,
        text=True,
        env=cluster.cli_env(),
    )
    deadline = threading.Timer(30, watch.kill)  # a watch that says nothing fails the test
    deadline.start()
    try:
        assert watch.stdout is not None
        assert len(json.loads(watch.stdout.readline())["endpoints"]) == 3
        cluster.cli("scale", "web=2")
        while len(json.loads(watch.stdout.readline())["endpoints"]) != 2:
            pass  # one line per change: the scale-down may take a step or two
    finally:
        deadline.cancel()
        watch.kill()
        watch.wait()


def _serves(host: str, port: int) -> bool:
    try:
        return "Directory listing" in http_get(host, port)
    except OSError:
        return False


def test_a_container_on_a_port_the_agent_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_test_image("docker")
    monkeypatch.setattr(cluster_module, "HEARTBEAT", 2.0)  # the agent imports the engine SDKs
    node = f"p{secrets.token_hex(3)}"
    try:
        with cluster_at(tmp_path) as cluster:
            cluster.start_agent(node, extra_args=["--port-range", RANGE])
            script = "mkdir -p /www && echo from-a-chosen-port > /www/index.html"
            cluster.apply(
                json.dumps(
                    {
                        "apiVersion": "shoal/v1",
                        "kind": "Service",
                        "metadata": {"name": "box"},
                        "spec": {
                            "replicas": 1,
                            "template": {
                                "runtime": "docker",
                                "image": TEST_IMAGE,
                                "command": ["sh", "-c", f"{script} && exec httpd -f -h /www"],
                                "ports": [{"name": "http", "target": 80, "published": 0}],
                                "stopGracePeriod": "1s",
                            },
                        },
                    }
                )
            )
            (task,) = cluster.wait_running("box", 1, timeout=60)
            (port,) = task["status"]["ports"]
            assert (port["name"], port["target"]) == ("http", 80)
            assert 31000 <= port["port"] <= 31999
            wait_for(
                lambda: "from-a-chosen-port" in _quiet_get("127.0.0.1", port["port"]),
                20,
                "the container to answer on its chosen port",
            )
            # Its own address on the engine network reaches the target port directly.
            address = task["status"]["containerAddress"]
            assert "from-a-chosen-port" in _quiet_get(address, 80)
            (endpoint,) = endpoints(cluster, "box")
            assert endpoint["containerAddress"] == address
            assert endpoint["ports"] == [port]
    finally:
        remove_node_containers("docker", node)


def _quiet_get(host: str, port: int) -> str:
    try:
        return http_get(host, port)
    except OSError:
        return ""
