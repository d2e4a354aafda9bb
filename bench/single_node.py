"""Single-node benchmark: a 200-replica ``sleep`` service, and apply → first task running.

Starts a real ``shoal up`` (manager + agent, SQLite store, process runtime) in a
temporary state directory and measures, through the Control API:

1. seconds from the Apply call until all N replicas report ``running``
   (then, untimed, it checks that the process table holds N tasks' processes);
2. for 50 separate one-replica services, the latency from the Apply call until
   the first task reports ``running``: p50 and p99.

    .venv/bin/python bench/single_node.py [--replicas 200] [--applies 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import free_port, open_shoal_up

from shoal.api.transport import CONTROL_SERVICE, Client, open_channel


def tasks_in_process_table(service: str) -> int:
    """How many distinct tasks of ``service`` have a live process (from /proc)."""
    needle = f"SHOAL_SERVICE={service}".encode()
    tasks: set[bytes] = set()
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if needle in env:
            tasks.update(item for item in env if item.startswith(b"SHOAL_TASK_ID="))
    return len(tasks)


def service(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": {"command": ["sleep", "3600"]}},
    }


async def running(client: Client, name: str) -> int:
    reply = await client.call("Get", {"kind": "services", "name": name})
    return int(reply["items"][0]["status"]["runningTasks"])


async def wait_gone(client: Client, names: list[str]) -> None:
    await client.call("Delete", {"names": names, "ignoreNotFound": True})
    while True:
        reply = await client.call("Get", {"kind": "tasks", "all": True})
        if not any(t["service"] in names for t in reply["items"]):
            return
        await asyncio.sleep(0.05)


async def bench(address: str, replicas: int, applies: int) -> dict[str, float]:
    channel = open_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    results: dict[str, float] = {}

    started = time.perf_counter()
    await client.call("Apply", {"services": [service("bench-many", replicas)]})
    while await running(client, "bench-many") < replicas:
        await asyncio.sleep(0.01)
    results["all_running_s"] = time.perf_counter() - started
    in_table = tasks_in_process_table("bench-many")
    if in_table != replicas:
        raise SystemExit(f"{replicas} tasks report running but {in_table} have processes")
    await wait_gone(client, ["bench-many"])

    latencies: list[float] = []
    for index in range(applies):
        name = f"bench-one-{index}"
        started = time.perf_counter()
        await client.call("Apply", {"services": [service(name, 1)]})
        while await running(client, name) < 1:
            await asyncio.sleep(0.002)
        latencies.append(time.perf_counter() - started)
    await wait_gone(client, [f"bench-one-{i}" for i in range(applies)])
    await channel.close()

    latencies.sort()
    results["first_running_p50_ms"] = statistics.median(latencies) * 1000
    results["first_running_p99_ms"] = (
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=200)
    parser.add_argument("--applies", type=int, default=50)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    args.port = args.port or free_port()
    with open_shoal_up(args.port, "process") as address:
        results = asyncio.run(bench(address, args.replicas, args.applies))
    rows = [
        (f"{args.replicas} replicas: apply → all running (s)", f"{results['all_running_s']:.2f}"),
        ("apply → first task running, p50 (ms)", f"{results['first_running_p50_ms']:.1f}"),
        ("apply → first task running, p99 (ms)", f"{results['first_running_p99_ms']:.1f}"),
    ]
    print(f"{'measure':<44} {'value':>10}")
    for label, value in rows:
        print(f"{label:<44} {value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
