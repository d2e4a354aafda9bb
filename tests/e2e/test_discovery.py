"""Service discovery end to end: the agents' DNS, endpoint files, containers by name.

One manager and two agents on one machine, advertising 127.0.0.2 and 127.0.0.3, each
answering DNS on its own address. What the test counts comes from the outside: ``dig``
(a DNS client that is not ours) and dnspython against the agents' listeners, HTTP
requests to what they list, ``/proc`` for the client process, a file its signal handler
writes, and the engine for what a container fetched. The tests share the cluster and
run in order; the last one stops the manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.e2e.cluster import Cluster, cluster_at, free_port, task_processes, wait_for
from tests.engines import TEST_IMAGE, client, ensure_test_image, remove_node_containers

pytestmark = pytest.mark.slow

HEALTH_INTERVAL = 1.0
WEB = ["sh", "-c", 'exec python3 -m http.server --bind "$SHOAL_NODE_ADDRESS" "$PORT"']


@dataclass
class Node:
    name: str
    address: str
    dns_port: int


@pytest.fixture(scope="module")
def nodes() -> list[Node]:
    suffix = secrets.token_hex(2)
    return [
        Node(f"da{suffix}", "127.0.0.2", free_port()),
        Node(f"db{suffix}", "127.0.0.3", free_port()),
    ]


def free_on_53(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: podman's bridge may not exist yet
        try:
            sock.bind((address, 53))
        except OSError:
            return False
    return True


def container_dns() -> str:
    """``auto``, unless another agent on this machine (a developer's ``shoal up``) already
    answers on the engines' gateways: then a host address of this test's own."""
    gateways = {"172.17.0.1", "10.88.0.1"}
    with contextlib.suppress(Exception):
        ipam = client("docker").api.inspect_network("bridge")["IPAM"]["Config"]
        gateways |= {c["Gateway"] for c in ipam if c.get("Gateway")}
    if all(free_on_53(g) for g in gateways):
        return "auto"
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in shown.splitlines():
        address = line.split()[3].split("/")[0]
        if address not in gateways and free_on_53(address):
            return address
    raise AssertionError(f"port 53 is taken on {sorted(gateways)} and every other host address")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, nodes: list[Node]) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("discovery")
    with cluster_at(root) as running:
        for index, node in enumerate(nodes):
            low = 33000 + 500 * index
            running.start_agent(
                node.name,
                extra_args=[
                    "--advertise-address",
                    node.address,
                    "--port-range",
                    f"{low}-{low + 499}",
                    "--dns-listen",
                    f"{node.address}:{node.dns_port}",
                    # Port 53 for containers is the first agent's to answer on.
                    "--container-dns",
                    "off" if index else container_dns(),
                ],
            )
        yield running
    for engine in ("docker", "podman"):
        if client_or_none(engine) is not None:
            remove_node_containers(engine, nodes[0].name)


def client_or_none(engine: str) -> Any:
    try:
        return client(engine)
    except BaseException:  # skipped or failed: nothing of ours runs there
        return None


def ask(node: Node, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, node.address, port=node.dns_port, timeout=3)


def srv(node: Node, service: str) -> set[tuple[str, int]]:
    """(address, port) of every SRV record for ``_http._tcp.<service>.shoal``, by dnspython."""
    response = ask(node, f"_http._tcp.{service}.shoal.", "SRV")
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())
    glue = {
        rrset.name.to_text(): rrset[0].to_text()
        for rrset in response.additional
        if rrset.rdtype == dns.rdatatype.A
    }
    return {
        (glue[record.target.to_text()], record.port)
        for rrset in response.answer
        for record in rrset
    }


def dig(node: Node, *query: str) -> str:
    result = subprocess.run(
        ["dig", f"@{node.address}", "-p", str(node.dns_port), "+tries=1", "+time=2", *query],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout


def dig_srv(node: Node, service: str) -> set[tuple[str, int]]:
    """The same through dig: (target, port) resolved with dig's own A query."""
    found = set()
    for line in dig(node, "+short", "SRV", f"_http._tcp.{service}.shoal").splitlines():
        _, _, port, target = line.split()
        (address,) = dig(node, "+short", "A", target).split()
        found.add((address, int(port)))
    return found


def status_of(node: Node, *query: str) -> str:
    for line in dig(node, *query).splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no status in dig's answer to {query}")


def expected(cluster: Cluster, service: str, nodes: list[Node]) -> set[tuple[str, int]]:
    """(node address, port) of the running tasks, as the store has them."""
    address = {n.name: n.address for n in nodes}
    return {
        (address[t["nodeId"]], t["status"]["ports"][0]["port"])
        for t in cluster.running(service)
        if t["status"].get("health") == "healthy"
    }


def serves(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=3) as reply:
            return "Directory listing" in reply.read().decode()
    except OSError:
        return False


def web_spec(cluster: Cluster, name: str, replicas: int, probe: list[str]) -> str:
    return cluster.service(
        name,
        WEB,
        replicas=replicas,
        template={
            "ports": [{"name": "http"}],
            "stopGracePeriod": "1s",
            "healthcheck": {"exec": probe, "interval": f"{HEALTH_INTERVAL}s", "retries": 1},
        },
        restartPolicy={"condition": "any", "delay": "200ms"},
    )


def test_dns_lists_exactly_the_healthy_replicas(cluster: Cluster, nodes: list[Node]) -> None:
    cluster.apply(web_spec(cluster, "web", 3, ["true"]))
    cluster.wait_running("web", 3)
    wait_for(lambda: len(expected(cluster, "web", nodes)) == 3, 20, "3 healthy replicas")
    want = expected(cluster, "web", nodes)
    for node in nodes:  # every agent answers for the whole cluster
        wait_for(lambda node=node: srv(node, "web") == want, 10, f"{node.name} to list web")
        assert dig_srv(node, "web") == want
        addresses = set(dig(node, "+short", "A", "web.shoal").split())
        assert addresses == {address for address, _ in want}
    for address, port in want:
        wait_for(lambda a=address, p=port: serves(a, p), 10, f"a server on {address}:{port}")


def test_an_http_probe_reaches_a_server_bound_to_its_node_address_only(
    cluster: Cluster, nodes: list[Node]
) -> None:
    # WEB binds $SHOAL_NODE_ADDRESS (127.0.0.2 and .3 here), not 127.0.0.1.
    health = {"http": {"port": "http", "path": "/"}, "interval": "300ms", "startPeriod": "20s"}
    cluster.apply(
        cluster.service(
            "bound", WEB, replicas=2, template={"ports": [{"name": "http"}], "healthcheck": health}
        )
    )
    cluster.wait_running("bound", 2)

    def healthy() -> list[dict[str, Any]]:
        return [t for t in cluster.tasks("bound") if t["status"].get("health") == "healthy"]

    wait_for(lambda: len(healthy()) == 2, 20, "both replicas healthy")
    assert len(cluster.tasks("bound")) == 2  # none was failed and replaced
    assert len(expected(cluster, "bound", nodes)) == 2


def test_unknown_names_are_nxdomain_and_empty_services_nodata(
    cluster: Cluster, nodes: list[Node]
) -> None:
    cluster.apply(cluster.service("idle", ["sleep", "600"], replicas=0))
    node = nodes[0]
    wait_for(lambda: ask(node, "idle.shoal.").rcode() == dns.rcode.NOERROR, 10, "idle known")
    assert status_of(node, "A", "idle.shoal") == "NOERROR"
    assert "ANSWER: 0" in dig(node, "A", "idle.shoal")
    assert status_of(node, "A", "nope.shoal") == "NXDOMAIN"
    assert status_of(node, "SRV", "_http._tcp.nope.shoal") == "NXDOMAIN"
    assert status_of(node, "A", "example.com") == "REFUSED"


def test_a_replica_whose_health_check_fails_is_never_listed(
    cluster: Cluster, nodes: list[Node]
) -> None:
    cluster.apply(web_spec(cluster, "sick", 2, ["false"]))
    node = nodes[1]
    wait_for(lambda: ask(node, "sick.shoal.").rcode() == dns.rcode.NOERROR, 10, "sick known")
    # Its tasks start, fail their probe and are replaced, again and again: never listed.
    started = {t["id"] for t in cluster.tasks("sick", all=True)}
    deadline = time.monotonic() + 4 * HEALTH_INTERVAL
    while time.monotonic() < deadline:
        for each in nodes:
            response = ask(each, "_http._tcp.sick.shoal.", "SRV")
            assert response.rcode() == dns.rcode.NOERROR and not response.answer
        time.sleep(0.1)
    assert {t["id"] for t in cluster.tasks("sick", all=True)} - started  # it did run tasks
    cluster.cli("delete", "service", "sick")


def test_a_killed_replica_leaves_the_answers_and_its_replacement_joins(
    cluster: Cluster, nodes: list[Node]
) -> None:
    address = {n.name: n.address for n in nodes}
    victim = next(t for t in cluster.running("web") if t["slot"] == 2)
    gone = (address[victim["nodeId"]], victim["status"]["ports"][0]["port"])
    node = nodes[0]
    assert gone in srv(node, "web")
    os.kill(int(victim["status"]["pid"]), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: gone not in srv(node, "web"), HEALTH_INTERVAL + 1, "the victim to leave")
    left = time.monotonic() - killed
    assert left <= HEALTH_INTERVAL + 1
    wait_for(lambda: len(srv(node, "web")) == 3, 20, "the replacement to join")
    replacement = next(t for t in cluster.running("web") if t["slot"] == 2)
    assert replacement["id"] != victim["id"]
    assert srv(node, "web") == srv(nodes[1], "web") == expected(cluster, "web", nodes)


CLIENT = textwrap.dedent(
    """\
    trap 'echo "hup $(tr -d " \\n" < "$SHOAL_ENDPOINTS_FILE")" >> "$OUT"' HUP
    echo "start $SHOAL_ENDPOINTS_WEB" >> "$OUT"
    while :; do sleep 0.1; done
    """
)


def test_a_client_gets_the_file_rewritten_and_a_signal_when_web_scales(
    cluster: Cluster, nodes: list[Node]
) -> None:
    out = cluster.root / "client-signals.txt"
    cluster.apply(
        cluster.service(
            "client",
            ["sh", "-c", CLIENT],
            replicas=1,
            template={
                "env": {"OUT": str(out), "E2E_RUN": str(cluster.root)},
                "discover": ["web"],
                "onEndpointsChange": "signal:SIGHUP",
            },
        )
    )
    cluster.wait_running("client", 1)
    wait_for(lambda: out.exists() and out.read_text().startswith("start "), 10, "the client")
    at_start = out.read_text().split()[1].split(",")
    assert {tuple(e.rsplit(":", 1)) for e in at_start} == {
        (a, str(p)) for a, p in expected(cluster, "web", nodes)
    }
    # The client's shell and its sleep: the same environment.
    files = {env["SHOAL_ENDPOINTS_FILE"] for env in task_processes("client").values()}
    (path,) = (Path(f) for f in files)
    assert len(json.loads(path.read_text())["services"]["web"]) == 3

    cluster.cli("scale", "web=4")
    wait_for(lambda: len(expected(cluster, "web", nodes)) == 4, 20, "a 4th healthy replica")
    wait_for(lambda: "hup " in out.read_text(), 10, "the client's SIGHUP")
    listed = json.loads(path.read_text())["services"]["web"]
    assert {(e["address"], e["port"]) for e in listed} == expected(cluster, "web", nodes)
    # What the handler read when the signal came was already the new file.
    seen = json.loads(out.read_text().splitlines()[-1].split(" ", 1)[1])
    assert seen["services"]["web"] == listed


STACK = """\
services:
  web:
    image: {image}
    command:
      - sh
      - -c
      - mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www
    x-shoal: {{runtime: {engine}}}
    deploy:
      placement:
        constraints: ["node.id == {node}"]
  fetch:
    image: {image}
    command:
      - sh
      - -c
      - mkdir -p /tmp; until wget -q -O /tmp/g http://web:8080/; do sleep 0.3; done; exec sleep 600
    x-shoal: {{runtime: {engine}}}
    deploy:
      placement:
        constraints: ["node.id == {node}"]
"""


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_a_container_fetches_a_stack_service_by_its_bare_name(
    cluster: Cluster, nodes: list[Node], engine: str
) -> None:
    ensure_test_image(engine)
    token = secrets.token_hex(8)
    stack = f"s{engine[0]}{secrets.token_hex(2)}"
    compose = cluster.root / f"{stack}.yaml"
    compose.write_text(
        STACK.format(image=TEST_IMAGE, token=token, engine=engine, node=nodes[0].name)
    )
    cluster.cli("stack", "deploy", "-c", str(compose), stack)
    sdk = client(engine)

    def fetched() -> str:
        # One label per filter: the podman SDK matches none when given a list.
        for container in sdk.containers.list(filters={"label": f"io.shoal.service={stack}-fetch"}):
            code, output = container.exec_run(["cat", "/tmp/g"])
            if code == 0:  # podman's output keeps its stream headers: look for the token
                return bytes(output).decode(errors="replace")
        return ""

    wait_for(lambda: token in fetched(), 60, f"the {engine} container to fetch web")
    cluster.cli("stack", "rm", stack)


def test_with_the_managers_gone_the_agents_answer_from_the_last_catalog(
    cluster: Cluster, nodes: list[Node]
) -> None:
    want = expected(cluster, "web", nodes)
    assert cluster.manager is not None
    cluster.manager.stop()
    time.sleep(1)
    for node in nodes:
        assert srv(node, "web") == want
        assert dig_srv(node, "web") == want
        assert status_of(node, "A", "nope.shoal") == "NXDOMAIN"
    for address, port in want:
        assert serves(address, port)
