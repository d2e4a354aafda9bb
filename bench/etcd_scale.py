"""A 20,000-replica sim service on three managers over a 3-member etcd with its default limits.

    .venv/bin/python bench/etcd_scale.py [--runs 1] [--replicas 20000] [--nodes 200]
        [--lease-ttl 5] [--heartbeat 2] [--timeout 300] [--lock /tmp/shoal-heavy.lock]
        [--quiet] [--keep DIR]

Starts a 3-member etcd on loopback with no limit flags (``--max-txn-ops`` 128,
``--max-request-bytes`` 1.5 MiB: ``tests/etcdcluster.py``), three real
managers on it (``--lease-ttl``, ``--heartbeat-period``), and one ``shoal agent
--sim-nodes`` process told about the first leader only. Then, through the
Control API, it applies one ``sim`` service of ``--replicas`` and measures
seconds until every task is observed running (``Get services``).

Counted from the outside, for the whole run: leadership terms begun after the
first (``shoal_leader_changes`` of the second and third managers' ``/metrics``,
the larger: each is a lease the leader lost or gave up), the ``NodeDown`` events in the
store (``Events``), and each manager's peak RSS (``VmHWM`` in ``/proc``).
Every run prints one ``etcd-scale-run:`` line, converged or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_channel, free_port
from prometheus_client.parser import text_string_to_metric_families
from scale import held, load_average, process_usage, running_tasks, service

from shoal.api.transport import CONTROL_SERVICE, Client
from shoal.errors import ApiError
from shoal.security.contexts import CredentialsError
from tests.etcdcluster import EtcdCluster

WRITES = "shoal_store_write_duration_seconds"


class Managers:
    """Three ``shoal manager`` processes on one etcd."""

    def __init__(self, root: Path, store: str, args: argparse.Namespace) -> None:
        self.root = root
        self.ports = [free_port() for _ in range(3)]
        self.metrics = [free_port() for _ in range(3)]
        self.joins = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self._start(args, store)
        except BaseException:
            self.stop()  # what started, if the first never led
            raise

    def _start(self, args: argparse.Namespace, store: str) -> None:
        root = self.root
        env = {**os.environ, "SHOAL_LOG_FORMAT": "json"}
        for index, (port, metrics) in enumerate(zip(self.ports, self.metrics, strict=True)):
            command = [sys.executable, "-m", "shoal", "manager", "--store", store]
            command += ["--state-dir", str(root / f"m{index}"), "--data-key-file"]
            command += [str(root / "datakey"), "--listen", f"127.0.0.1:{port}"]
            command += ["--join-listen", f"127.0.0.1:{self.joins[index]}"]
            command += ["--metrics-listen", f"127.0.0.1:{metrics}"]
            command += ["--heartbeat-period", f"{int(args.heartbeat * 1000)}ms"]
            command += ["--lease-ttl", f"{int(args.lease_ttl * 1000)}ms"]
            with (root / f"m{index}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                )
            if index == 0:  # the first leads; the others join its cluster
                asyncio.run(wait_leader(self.address(0), 60))

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    def leader_changes(self) -> int:
        """Terms begun after the first, as the second and third managers count them.

        They start once the first leads, so each sees every later term begin; the
        first may or may not have seen its own (its watch and its campaign race)."""
        seen = [0]
        for port in self.metrics[1:]:
            with contextlib.suppress(OSError):
                seen.append(int(metric(f"http://127.0.0.1:{port}/metrics", "shoal_leader_changes")))
        return max(seen)

    def stalls(self) -> list[float]:
        """Seconds each manager's event loop was held (``shoal_manager_stall_seconds``)."""
        found = []
        for port in self.metrics:
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                found.append(metric(url, "shoal_manager_stall_seconds_total"))
            except OSError:
                found.append(float("nan"))
        return found

    def why_lost(self) -> Counter[str]:
        """Why leaders stepped down and keep-alives failed, from the managers' logs.

        A diagnosis to print beside the counts, not a count itself."""
        reasons: Counter[str] = Counter()
        for index in range(3):
            for line in (self.root / f"m{index}.log").read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == "election.lost":
                        reasons[f"lost: {record.get('reason')}"] += 1
                    elif record.get("event") == "election.keepalive_failed":
                        reasons[f"keep-alive failed: {str(record.get('error'))[:80]}"] += 1
        return reasons

    def progress(self) -> str:
        """Tasks and nodes by state (the leader's gauges), store writes and loop stalls so far."""
        parts = []
        for index, port in enumerate(self.metrics):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                samples = [
                    s
                    for f in text_string_to_metric_families(text.read().decode())
                    for s in f.samples
                ]
            except OSError:
                parts.append(f"m{index}=?")
                continue
            found: defaultdict[str, float] = defaultdict(float)
            for s in samples:
                if s.name in ("shoal_tasks", "shoal_nodes") and s.value:
                    found[f"{s.name[6:]}.{s.labels['state']}"] += s.value
                elif s.name == "shoal_manager_stall_seconds_total":
                    found["stall_s"] = s.value
                elif s.name in (WRITES + "_count", WRITES + "_sum"):
                    found[s.name.rsplit("_", 1)[1]] += s.value
            writes = found.pop("count", 0)
            mean = found.pop("sum", 0) / writes if writes else 0
            shown = " ".join(
                f"{k}={v:.0f}" if k != "stall_s" else f"{k}={v:.1f}"
                for k, v in sorted(found.items())
            )
            parts.append(f"m{index}[writes={writes:.0f} mean={mean * 1000:.0f}ms {shown}]")
        return " ".join(parts)

    def peak_rss_mb(self) -> list[float]:
        return [process_usage(p.pid)[1] / 1e6 if p.poll() is None else 0.0 for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def wait_leader(address: str, timeout: float) -> None:
    """Until the manager at ``address`` names a leader (its admin bundle may not exist yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError, OSError, CredentialsError):
            channel = bench_channel(address)
            try:
                status = await Client(channel, CONTROL_SERVICE).call("ClusterStatus", {}, timeout=5)
                if status.get("leader"):
                    return
            finally:
                await channel.close()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no manager leads after {timeout:.0f}s")


async def scenario(args: argparse.Namespace, managers: Managers, result: dict[str, float]) -> None:
    """Nodes ready, then apply and wait until every replica runs (or the timeout)."""
    channel = bench_channel(managers.address(0), timeout=60)
    client = Client(channel, CONTROL_SERVICE)
    try:
        started = time.monotonic()
        while time.monotonic() - started < args.timeout:
            with contextlib.suppress(ApiError):
                nodes = (await client.call("Get", {"kind": "nodes"}, timeout=30))["items"]
                if sum(n["status"]["state"] == "ready" for n in nodes) == args.nodes:
                    break
            await asyncio.sleep(0.5)
        else:
            raise TimeoutError(f"{args.nodes} nodes not ready after {args.timeout:.0f}s")
        result["join_s"] = time.monotonic() - started
        started = time.monotonic()
        await client.call("Apply", {"services": [service("big", args.replicas)]}, timeout=120)
        result["apply_call_s"] = time.monotonic() - started
        running = 0
        shown = started
        while time.monotonic() - started < args.timeout:
            with contextlib.suppress(ApiError):
                running = await running_tasks(client)
            result["running"] = running
            if not args.quiet and time.monotonic() >= shown + 5:
                shown = time.monotonic()
                print(
                    f"  {shown - started:5.0f}s running={running} {managers.progress()}", flush=True
                )
            if running == args.replicas:
                result["converge_s"] = time.monotonic() - started
                return
            await asyncio.sleep(0.5)
    finally:
        await channel.close()


async def node_down_events(address: str) -> int:
    channel = bench_channel(address)
    try:
        reply = await Client(channel, CONTROL_SERVICE).call("Events", {}, timeout=30)
        return sum(int(e["count"]) for e in reply["events"] if e["reason"] == "NodeDown")
    finally:
        await channel.close()


def one_run(args: argparse.Namespace, number: int) -> bool:
    load_before = load_average()
    result: dict[str, float] = {}
    error = ""
    lease_losses = node_down = -1
    rss: list[float] = []
    stalls: list[float] = []
    why: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        if args.keep:
            root = Path(args.keep) / f"run{number}"
            root.mkdir(parents=True, exist_ok=False)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        etcd = EtcdCluster(root / "etcd")
        managers: Managers | None = None
        fleet: subprocess.Popen[bytes] | None = None
        try:
            etcd.start()
            os.environ["SHOAL_STATE_DIR"] = str(root / "m0")  # the first manager's admin bundle
            managers = Managers(root, etcd.url("bench"), args)
            for index in (1, 2):
                asyncio.run(wait_leader(managers.address(index), 60))
            token = subprocess.run(
                [sys.executable, "-m", "shoal", "token", "worker", "--server", managers.address(0)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            command = [sys.executable, "-m", "shoal", "agent", "--manager", managers.address(0)]
            command += ["--join", f"127.0.0.1:{managers.joins[0]}", "--token", token]
            command += ["--name", "fleet"]
            command += ["--state-dir", str(root / "fleet"), "--sim-nodes", str(args.nodes)]
            with (root / "fleet.log").open("ab") as log:
                fleet = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            asyncio.run(scenario(args, managers, result))
            if "converge_s" not in result:
                error = f"{int(result.get('running', 0))} of {args.replicas} running"
        except (TimeoutError, ApiError, OSError, subprocess.CalledProcessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if managers is not None:
                rss = managers.peak_rss_mb()
                lease_losses = managers.leader_changes()
                stalls = managers.stalls()
                for index in range(3):
                    with contextlib.suppress(ApiError, OSError):
                        node_down = asyncio.run(node_down_events(managers.address(index)))
                        break
            if fleet is not None:
                fleet.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    fleet.wait(15)
                if fleet.poll() is None:
                    fleet.kill()
            if managers is not None:
                managers.stop()
                why = managers.why_lost()
            etcd.close()
    converge = result.get("converge_s", float("nan"))
    print(
        f"etcd-scale-run: run={number} replicas={args.replicas} nodes={args.nodes} "
        f"lease_ttl={args.lease_ttl:g}s heartbeat={args.heartbeat:g}s "
        f"converged={'no' if error else 'yes'} converge_s={converge:.1f} "
        f"tasks_per_s={args.replicas / converge if converge == converge else 0:.0f} "
        f"join_s={result.get('join_s', float('nan')):.1f} "
        f"apply_call_s={result.get('apply_call_s', float('nan')):.2f} "
        f"lease_losses={lease_losses} node_down_events={node_down} "
        f"peak_rss_mb={'/'.join(f'{r:.0f}' for r in rss)} "
        f"loop_stall_s={'/'.join(f'{x:.1f}' for x in stalls)} "
        f"load={load_before}->{load_average()}" + (f" error={error!r}" if error else ""),
        flush=True,
    )
    if not args.quiet:
        for reason, count in why.most_common():
            print(f"  {count:4d} x {reason}")
    return not error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--lease-ttl", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument("--lock", help="flock this file for each run (shared machines)")
    parser.add_argument("--quiet", action="store_true", help="only the summary lines")
    parser.add_argument("--keep", help="keep each run's logs and state under this directory")
    args = parser.parse_args()
    converged = 0
    for number in range(1, args.runs + 1):
        with held(args.lock):
            converged += one_run(args, number)
    return 0 if converged == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
