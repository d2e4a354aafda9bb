"""shoal vs Docker Swarm mode vs the engine's floor, on the same Docker engine.

One run, three measurements of the same work: N replicas (default 50) of the
busybox test image running ``sleep``, timed from the request until all N are
running, each seen through its own orchestrator's view:

floor   the same N containers created and started directly through the docker
        SDK, in parallel (as many threads as shoal's docker runtime uses, 16);
        done when every start call returned (a started container is running).
shoal   a real ``shoal up`` (manager + agent, SQLite, docker runtime): the Apply
        call until the service reports N running tasks.
swarm   ``docker swarm init --advertise-addr 127.0.0.1`` (left again afterwards if
        this script initialised it), a service of N replicas created through the
        SDK (as ``docker service create`` does) until N tasks are running.

Rounds (``--rounds``, default 3) run the three one after the other, so that
each round's figures share the machine's load; the medians are reported, with
the ratios shoal/swarm and shoal/floor. Needs root, dockerd and the test image
(``deploy/engines.sh``).

    .venv/bin/python bench/swarm_compare.py [--replicas 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import docker.types
from harness import bench_channel, open_shoal_up

from shoal.api.transport import CONTROL_SERVICE, Client
from shoal.errors import ApiError

IMAGE = "shoal-test/busybox:latest"
THREADS = 16


def sdk() -> Any:
    return docker.DockerClient(
        base_url="unix:///var/run/docker.sock", version="1.41", max_pool_size=THREADS, timeout=120
    )


def remove_label(client: Any, label: str) -> None:
    for container in client.containers.list(all=True, sparse=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def floor(replicas: int) -> float:
    client = sdk()
    run = secrets.token_hex(4)
    label = f"bench-floor={run}"

    def one(index: int) -> None:
        container = client.containers.create(
            IMAGE, ["sleep", "3600"], name=f"floor-{run}-{index}", labels={"bench-floor": run}
        )
        container.start()

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(replicas)))
    elapsed = time.perf_counter() - started
    running = client.containers.list(sparse=True, filters={"label": label, "status": "running"})
    if len(running) != replicas:
        raise SystemExit(f"floor: {len(running)} of {replicas} containers running")
    remove_label(client, label)
    return elapsed


def shoal_service(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {
                "runtime": "docker",
                "image": IMAGE,
                "command": ["sleep", "3600"],
                "stopGracePeriod": "1s",
            },
        },
    }


async def shoal_round(address: str, replicas: int, node: str) -> float:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    name = f"bench-{secrets.token_hex(3)}"
    try:
        started = time.perf_counter()
        await client.call("Apply", {"services": [shoal_service(name, replicas)]})
        while True:
            try:
                reply = await client.call("Get", {"kind": "services", "name": name})
            except ApiError as exc:  # a read may briefly trail the write it follows
                if exc.code != "NOT_FOUND":
                    raise
                reply = {"items": [{"status": {"runningTasks": 0}}]}
            if int(reply["items"][0]["status"]["runningTasks"]) >= replicas:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        running = sdk().containers.list(
            sparse=True, filters={"label": [f"io.shoal.node={node}", f"io.shoal.service={name}"]}
        )
        if len(running) != replicas:
            raise SystemExit(f"shoal: {replicas} tasks report running, {len(running)} containers")
        await client.call("Delete", {"kind": "services", "names": [name]})
        while True:
            reply = await client.call("Get", {"kind": "tasks", "all": True})
            if not any(t["service"] == name for t in reply["items"]):
                break
            await asyncio.sleep(0.1)
        # And until the agent removed the containers, so the next round starts quiet.
        label = f"io.shoal.service={name}"
        while sdk().containers.list(all=True, sparse=True, filters={"label": label}):
            await asyncio.sleep(0.2)
        return elapsed
    finally:
        await channel.close()


@contextlib.contextmanager
def open_shoal(port: int) -> Iterator[tuple[str, str]]:
    """A ``shoal up`` with the docker runtime working: ``(address, node name)``."""
    node = ""
    try:
        with open_shoal_up(port, "docker") as address:
            node = asyncio.run(_node_name(address))
            yield address, node
    finally:
        if node:  # once shoal has stopped, so nothing recreates them
            remove_label(sdk(), f"io.shoal.node={node}")


async def _node_name(address: str) -> str:
    channel = bench_channel(address)
    try:
        nodes = (await Client(channel, CONTROL_SERVICE).call("Get", {"kind": "nodes"}))["items"]
        return str(nodes[0]["id"])
    finally:
        await channel.close()


@contextlib.contextmanager
def open_swarm() -> Iterator[Any]:
    """This engine in swarm mode (initialised here, and left again, unless it already was)."""
    client = sdk()
    joined = client.info().get("Swarm", {}).get("LocalNodeState") == "active"
    if not joined:
        subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
            check=True,
            capture_output=True,
        )
    try:
        yield client
    finally:
        if not joined:
            subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)


def swarm_round(client: Any, replicas: int) -> float:
    name = f"bench-{secrets.token_hex(3)}"
    started = time.perf_counter()
    service = client.services.create(
        IMAGE,
        ["sleep", "3600"],
        name=name,
        mode=docker.types.ServiceMode("replicated", replicas=replicas),
        stop_grace_period=1_000_000_000,
    )
    while True:
        states = [t["Status"]["State"] for t in service.tasks()]
        if states.count("running") >= replicas:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    service.remove()
    while client.containers.list(
        all=True, sparse=True, filters={"label": f"com.docker.swarm.service.name={name}"}
    ):
        time.sleep(0.2)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=7496)
    args = parser.parse_args()

    # Rounds interleave the three, so each round's figures share the machine's load.
    floors, shoals, swarms = [], [], []
    with open_shoal(args.port) as (address, node), open_swarm() as client:
        for _ in range(args.rounds):
            floors.append(floor(args.replicas))
            shoals.append(asyncio.run(shoal_round(address, args.replicas, node)))
            swarms.append(swarm_round(client, args.replicas))
    f, s, w = (statistics.median(x) for x in (floors, shoals, swarms))
    print(f"replicas: {args.replicas}, rounds: {args.rounds} (median shown)")
    print(f"floor  (SDK, {THREADS} threads): {f:6.2f} s   {' '.join(f'{x:.2f}' for x in floors)}")
    print(f"shoal  (apply → all running): {s:6.2f} s   {' '.join(f'{x:.2f}' for x in shoals)}")
    print(f"swarm  (create → all running): {w:6.2f} s   {' '.join(f'{x:.2f}' for x in swarms)}")
    print(f"shoal/swarm: {s / w:.2f}  (goal ≤ 0.65)")
    print(f"shoal/floor: {s / f:.2f}  (goal ≤ 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
