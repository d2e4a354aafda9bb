"""Rolling updates: how long an update takes against its ideal, and against Swarm mode.

Two measurements, in one run:

process  100 process replicas (``sleep``) on a real ``shoal up``, updated with
         parallelism 10 and monitor 1 s: seconds from the Apply of the new
         template until ``status.update.state`` is ``completed``. The ideal is
         10 batches x the 1 s monitor window = 10 s; what is above it is the
         cost of stopping, starting and reporting each batch.
docker   50 busybox replicas on the Docker runtime, the same update
         (parallelism 10, monitor 1 s, stop-first), on shoal and on Swarm mode
         on the same engine (``docker service update --update-parallelism 10
         --update-monitor 1s --env-add``, through the SDK as the CLI does):
         seconds from the update request until the update state is completed.

Rounds (``--rounds``, default 3) interleave shoal and swarm, so each round's
figures share the machine's load; every round is printed, with the medians.
Needs root, dockerd and the test image (``deploy/engines.sh``); hold
``/tmp/shoal-heavy.lock`` on a shared machine.

    .venv/bin/python bench/rollout.py [--rounds 3] [--skip-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from typing import Any

from harness import bench_channel, free_port, open_shoal_up

from shoal.api.transport import CONTROL_SERVICE, Client

IMAGE = "shoal-test/busybox:latest"


def service(name: str, replicas: int, version: str, runtime: str) -> dict[str, Any]:
    template: dict[str, Any] = {
        "command": ["sleep", "3600"],
        "env": {"V": version},
        "stopGracePeriod": "1s",
    }
    if runtime == "docker":
        template |= {"runtime": "docker", "image": IMAGE}
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": template,
            "update": {"parallelism": 10, "monitor": "1s"},
        },
    }


async def _state(client: Client, name: str) -> tuple[str, int]:
    reply = await client.call("Get", {"kind": "services", "name": name})
    status = reply["items"][0].get("status") or {}
    update = status.get("update") or {}
    return str(update.get("state", "")), int(status.get("runningTasks", 0))


async def shoal_round(address: str, replicas: int, runtime: str, timeout: float) -> float:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    name = f"bench-{secrets.token_hex(3)}"
    try:
        await client.call("Apply", {"services": [service(name, replicas, "1", runtime)]})
        while (await _state(client, name))[1] < replicas:
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        await client.call("Apply", {"services": [service(name, replicas, "2", runtime)]})
        while True:
            state, _ = await _state(client, name)
            elapsed = time.perf_counter() - started
            if state == "completed":
                break
            if state in ("paused", "rollback_started", "rollback_completed") or elapsed > timeout:
                raise SystemExit(f"shoal ({runtime}): update ended {state!r} after {elapsed:.1f}s")
            await asyncio.sleep(0.05)
        await client.call("Delete", {"kind": "services", "names": [name]})
        while True:
            reply = await client.call("Get", {"kind": "tasks", "all": True})
            if not any(t["service"] == name for t in reply["items"]):
                break
            await asyncio.sleep(0.2)
        return elapsed
    finally:
        await channel.close()


def swarm_round(client: Any, replicas: int, timeout: float) -> float:
    import docker.types

    name = f"bench-{secrets.token_hex(3)}"
    svc = client.services.create(
        IMAGE,
        ["sleep", "3600"],
        name=name,
        env=["V=1"],
        mode=docker.types.ServiceMode("replicated", replicas=replicas),
        stop_grace_period=1_000_000_000,
    )
    try:
        while [t["Status"]["State"] for t in svc.tasks()].count("running") < replicas:
            time.sleep(0.1)
        svc.reload()
        started = time.perf_counter()
        svc.update(
            env=["V=2"],
            update_config=docker.types.UpdateConfig(parallelism=10, monitor=1_000_000_000),
        )
        while True:
            svc.reload()
            state = (svc.attrs.get("UpdateStatus") or {}).get("State", "")
            elapsed = time.perf_counter() - started
            if state == "completed":
                return elapsed
            if state in ("paused", "rollback_completed") or elapsed > timeout:
                raise SystemExit(f"swarm: update ended {state!r} after {elapsed:.1f}s")
            time.sleep(0.05)
    finally:
        svc.remove()
        label = f"com.docker.swarm.service.name={name}"
        while client.containers.list(all=True, sparse=True, filters={"label": label}):
            time.sleep(0.2)


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--process-replicas", type=int, default=100)
    parser.add_argument("--docker-replicas", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--skip-docker", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    ideal = args.process_replicas / 10 * 1.0
    processes: list[float] = []
    with open_shoal_up(free_port(), "process") as address:
        for _ in range(args.rounds):
            processes.append(
                asyncio.run(shoal_round(address, args.process_replicas, "process", args.timeout))
            )
    median = statistics.median(processes)
    print(
        f"process: {args.process_replicas} replicas, parallelism 10, monitor 1s: "
        f"median {median:.2f} s, ideal {ideal:.0f} s, x{median / ideal:.2f}   [{_fmt(processes)}]"
    )
    if args.skip_docker:
        return 0

    from swarm_compare import open_shoal, open_swarm

    shoals: list[float] = []
    swarms: list[float] = []
    with open_shoal(free_port()) as (address, _node), open_swarm() as client:
        for _ in range(args.rounds):
            shoals.append(
                asyncio.run(shoal_round(address, args.docker_replicas, "docker", args.timeout))
            )
            swarms.append(swarm_round(client, args.docker_replicas, args.timeout))
    s, w = statistics.median(shoals), statistics.median(swarms)
    ideal = args.docker_replicas / 10 * 1.0
    print(f"docker: {args.docker_replicas} busybox replicas, parallelism 10, monitor 1s")
    print(f"  shoal: median {s:.2f} s   [{_fmt(shoals)}]")
    print(f"  swarm: median {w:.2f} s   [{_fmt(swarms)}]")
    print(f"  ideal {ideal:.0f} s; shoal/swarm {s / w:.2f}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
