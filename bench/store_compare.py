"""Apply throughput and latency: SQLite versus a 3-member etcd cluster, in one run.

Starts real processes in a temporary directory: a ``shoal manager`` on SQLite
(``synchronous=FULL``), then a 3-member etcd cluster on loopback ports with two
``shoal manager``s on it (one leads, one follows). Through the Control API, as
a client sees it, for each setup:

1. sequential: ``--sequential`` Apply calls one after the other, each creating
   a new service (0 replicas, so only the control path and the store are
   measured): latency p50 and p99, and applies/s;
2. concurrent: ``--concurrent`` Apply calls from ``--clients`` clients at
   once: applies/s, and latency p50 and p99 under that load.

The etcd setup is measured twice: applies sent to the leader, and sent to the
follower (which forwards them to the leader).

    .venv/bin/python bench/store_compare.py [--sequential 300] [--concurrent 1000] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import bench_channel, free_port  # noqa: E402

from shoal.api.transport import CONTROL_SERVICE, Client  # noqa: E402
from tests.etcdcluster import EtcdCluster  # noqa: E402


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"replicas": 0, "template": {"command": ["sleep", "3600"]}},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_manager(root: Path, name: str, store: str, port: int) -> subprocess.Popen[bytes]:
    log = (root / f"{name}.log").open("ab")
    args = [sys.executable, "-m", "shoal", "manager", "--store", store]
    args += ["--state-dir", str(root / name), "--listen", f"127.0.0.1:{port}"]
    args += ["--join-listen", "127.0.0.1:0"]
    if store.startswith("etcd://"):  # every manager of one cluster shares the data key
        args += ["--data-key-file", str(root / "datakey")]
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


async def wait_ready(address: str, leader: bool = False) -> None:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                status = await client.call("ClusterStatus", {}, timeout=2)
                if not leader or status.get("leader") == address:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)
    finally:
        await channel.close()
    raise SystemExit(f"manager at {address} did not become ready")


async def measure(
    address: str, prefix: str, sequential: int, concurrent: int, clients: int
) -> dict[str, float]:
    channels = [bench_channel(address) for _ in range(clients)]
    stubs = [Client(c, CONTROL_SERVICE) for c in channels]
    results: dict[str, float] = {}
    try:
        latencies: list[float] = []
        started = time.perf_counter()
        for i in range(sequential):
            t = time.perf_counter()
            await stubs[0].call("Apply", {"services": [service(f"{prefix}-s{i}")]})
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - started
        results["seq_per_s"] = sequential / elapsed
        results["seq_p50_ms"] = 1000 * percentile(latencies, 0.50)
        results["seq_p99_ms"] = 1000 * percentile(latencies, 0.99)

        latencies = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(concurrent):
            queue.put_nowait(i)

        async def worker(stub: Client) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t = time.perf_counter()
                await stub.call("Apply", {"services": [service(f"{prefix}-c{i}")]})
                latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in stubs))
        elapsed = time.perf_counter() - started
        results["conc_per_s"] = concurrent / elapsed
        results["conc_p50_ms"] = 1000 * percentile(latencies, 0.50)
        results["conc_p99_ms"] = 1000 * percentile(latencies, 0.99)
        results["conc_mean_ms"] = 1000 * statistics.fmean(latencies)
    finally:
        for channel in channels:
            await channel.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        print("etcd is not installed: apt-get install etcd-server etcd-client", file=sys.stderr)
        return 1
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        root = Path(tmp)
        runs = (args.sequential, args.concurrent, args.clients)

        port = free_port()
        os.environ["SHOAL_STATE_DIR"] = str(root / "sqlite")  # for bench_channel
        sqlite = start_manager(root, "sqlite", f"sqlite:///{root / 'sqlite' / 'state.db'}", port)
        try:
            asyncio.run(wait_ready(f"127.0.0.1:{port}"))
            rows.append(("sqlite", asyncio.run(measure(f"127.0.0.1:{port}", "sq", *runs))))
        finally:
            sqlite.terminate()
            sqlite.wait(30)

        etcd = EtcdCluster(root / "etcd")
        etcd.start()
        managers: list[subprocess.Popen[bytes]] = []
        try:
            leader_port, follower_port = free_port(), free_port()
            os.environ["SHOAL_STATE_DIR"] = str(root / "m1")
            managers.append(start_manager(root, "m1", etcd.url("bench"), leader_port))
            asyncio.run(wait_ready(f"127.0.0.1:{leader_port}", leader=True))
            managers.append(start_manager(root, "m2", etcd.url("bench"), follower_port))
            asyncio.run(wait_ready(f"127.0.0.1:{follower_port}"))
            leader = f"127.0.0.1:{leader_port}"
            follower = f"127.0.0.1:{follower_port}"
            rows.append(("etcd x3, to the leader", asyncio.run(measure(leader, "el", *runs))))
            rows.append(("etcd x3, via a follower", asyncio.run(measure(follower, "ef", *runs))))
        finally:
            for manager in managers:
                manager.terminate()
                manager.wait(30)
            etcd.close()

    print(
        f"sequential: {args.sequential} applies one by one; "
        f"concurrent: {args.concurrent} applies from {args.clients} clients"
    )
    header = "| store | seq applies/s | seq p50 | seq p99 | conc applies/s | conc p50 | conc p99 |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(
            f"| {name} | {r['seq_per_s']:.0f} | {r['seq_p50_ms']:.1f} ms | "
            f"{r['seq_p99_ms']:.1f} ms | {r['conc_per_s']:.0f} | {r['conc_p50_ms']:.1f} ms | "
            f"{r['conc_p99_ms']:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
