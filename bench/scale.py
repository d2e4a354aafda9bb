"""Control-plane scale: 1,000 simulated nodes, 10 services x 1,000 replicas.

    .venv/bin/python bench/scale.py [--runs 1] [--fleets 2] [--nodes 1000] [--services 10]
        [--replicas 1000] [--timeout 180] [--lock /tmp/shoal-heavy.lock] [--quiet]

Starts a real manager (SQLite store) and two ``shoal agent --sim-nodes``
processes (900 + 100 simulated nodes by default: every node is a full agent
with its own session, heartbeats and assignments; only its tasks are
simulated; ``--fleets 1`` puts all nodes in one process and skips step 2),
then, through the Control API:

1. applies the services in one apply and measures seconds until every task is
   observed ``running`` (tasks/s);
2. SIGKILLs the 100-node process and measures seconds until the tasks of those
   nodes run elsewhere (to compare with the heartbeat grace + 5 s);
3. scales every service to 0 and measures seconds until no task is left.

It reports the manager's peak RSS and CPU seconds, reconcile latency p50/p99
(from the manager's own histogram), prints a table, and plots running tasks
over time to ``bench/out/scale.png`` (with matplotlib, from the ``bench`` extra).

Every run ends with one ``scale-run:`` line (figures, the load average before
and after, the session messages the apply cost, the manager's RSS before and
after the apply, whether it converged), also for runs that fail: a run that does
not converge within ``--timeout`` is reported, not hidden. ``--runs N``
repeats the whole run with fresh processes; ``--lock PATH`` holds an
``flock`` on PATH for each run only (shared machines); ``--quiet`` prints
only the summary lines; ``--profile DIR`` records the manager and the first
fleet with ``py-spy`` (``pip install py-spy``) into DIR during the apply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import bench_channel, free_port
from prometheus_client.parser import text_string_to_metric_families

from shoal.api.transport import CONTROL_SERVICE, Client
from shoal.errors import ApiError

OUT = Path(__file__).resolve().parent / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEARTBEAT = 2.0
# How often the scale-down phase reads the task gauge from /metrics.
SCRAPE_PERIOD = 1.0
# Seconds between the nodes joining and the apply in which their idle cost is measured.
IDLE_WINDOW = 5.0


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    points: list[tuple[float, int, str]] = field(default_factory=list)

    def add(self, running: int, phase: str) -> None:
        self.points.append((time.monotonic() - self.started, running, phase))


def process_usage(pid: int, field: str = "VmHWM") -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process, from /proc (``field="VmRSS"``: the
    RSS now)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def service(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"runtime": "sim", "command": ["sim"]},
            "restartPolicy": {"delay": "0s"},
        },
    }


async def running_tasks(client: Client) -> int:
    """Running tasks over every service (cheap: the service summaries only)."""
    reply = await client.call("Get", {"kind": "services"}, timeout=30)
    return sum(int(s["status"]["runningTasks"]) for s in reply["items"])


def task_count(metrics_url: str, state: str | None = None) -> int:
    """Tasks the store holds (history included; only ``state`` if given), from the gauge."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "shoal_tasks":
            return int(
                sum(
                    sample.value
                    for sample in family.samples
                    if state is None or sample.labels.get("state") == state
                )
            )
    raise RuntimeError("the manager exports no shoal_tasks gauge")


def session_messages(metrics_url: str) -> dict[tuple[str, str], float]:
    """Session messages (and the tasks or updates they carried) so far, by family and
    direction/type: ``("messages", "sent/assignments")`` and ``("items", ...)``."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: dict[tuple[str, str], float] = {}
    names = {"shoal_session_messages": "messages", "shoal_session_message_items": "items"}
    for family in text_string_to_metric_families(text):
        if family.name in names:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = f"{sample.labels['direction']}/{sample.labels['type']}"
                    counts[(names[family.name], key)] = sample.value
    return counts


def messages_summary(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> str:
    """What the apply cost in session messages: count per kind, and tasks (updates) per
    assignment message (status batch)."""

    def delta(family: str, key: str) -> float:
        return after.get((family, key), 0.0) - before.get((family, key), 0.0)

    assignments = delta("messages", "sent/assignments")
    batches = delta("messages", "received/status")
    return (
        f"assignments:{assignments:.0f}"
        f"({delta('items', 'sent/assignments') / max(assignments, 1):.1f}/msg),"
        f"status:{batches:.0f}({delta('items', 'received/status') / max(batches, 1):.1f}/msg),"
        f"heartbeats:{delta('messages', 'received/heartbeat'):.0f},"
        f"answers:{delta('messages', 'sent/heartbeat') + delta('messages', 'sent/status'):.0f}"
    )


async def ready_nodes(client: Client) -> int:
    nodes = (await client.call("Get", {"kind": "nodes"}, timeout=30))["items"]
    return sum(1 for n in nodes if n["status"]["state"] == "ready")


class NotConverged(Exception):
    """A phase did not finish within the run's timeout."""


async def wait_until(
    client: Client, timeline: Timeline, phase: str, done: Any, timeout: float
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            running = await running_tasks(client)
        except ApiError as exc:  # a busy manager: note it and poll again
            print(f"poll failed ({exc.code}), retrying", file=sys.stderr)
            continue
        timeline.add(running, phase)
        if done(running):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    last = timeline.points[-1][1] if timeline.points else 0
    raise NotConverged(f"{phase}: not done after {timeout:.0f}s ({last} running)")


def reconcile_quantiles(metrics_url: str) -> dict[str, tuple[float, float]]:
    """p50 and p99 per controller from the reconcile duration histogram."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "shoal_reconcile_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                controller = sample.labels["controller"]
                buckets.setdefault(controller, []).append(
                    (float(sample.labels["le"]), sample.value)
                )
    result = {}
    for controller, points in buckets.items():
        points.sort()
        total = points[-1][1]
        if total == 0:
            continue

        def quantile(
            q: float, points: list[tuple[float, float]] = points, total: float = total
        ) -> float:
            target = q * total
            previous_le, previous_count = 0.0, 0.0
            for le, count in points:
                if count >= target:
                    if le == float("inf"):
                        return previous_le
                    span = count - previous_count
                    fraction = (target - previous_count) / span if span else 1.0
                    return previous_le + (le - previous_le) * fraction
                previous_le, previous_count = le, count
            return previous_le

        result[controller] = (quantile(0.5), quantile(0.99))
    return result


async def scenario(
    args: argparse.Namespace,
    number: int,
    metrics_url: str,
    address: str,
    manager_pid: int,
    fleets: list[subprocess.Popen[bytes]],
    results: dict[str, Any],
) -> None:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    timeline = Timeline()
    results["timeline"] = timeline
    total = args.services * args.replicas

    # What 1,000 idle nodes cost (sessions, heartbeats), in cores, before the apply.
    idle_before = [process_usage(p)[0] for p in (manager_pid, *(f.pid for f in fleets))]
    await asyncio.sleep(IDLE_WINDOW)
    results["idle_cores"] = [
        (process_usage(p)[0] - b) / IDLE_WINDOW
        for p, b in zip((manager_pid, *(f.pid for f in fleets)), idle_before, strict=True)
    ]
    messages_before = await asyncio.to_thread(session_messages, metrics_url)
    cpu_before, results["idle_rss"] = process_usage(manager_pid, "VmRSS")
    fleets_before = [process_usage(f.pid)[0] for f in fleets]
    services = [service(f"scale-{i}", args.replicas) for i in range(args.services)]
    spies = profile(args.profile, number, manager_pid, fleets[0].pid) if args.profile else []
    apply_started = time.monotonic()
    await client.call("Apply", {"services": services}, timeout=120)
    timeline.add(0, "apply")
    try:
        await wait_until(client, timeline, "apply", lambda r: r == total, args.timeout)
    finally:
        stop(spies, signal.SIGINT)
    seconds = time.monotonic() - apply_started
    cpu_after, results["apply_rss"] = process_usage(manager_pid, "VmRSS")
    fleets_cpu = [process_usage(f.pid)[0] - b for f, b in zip(fleets, fleets_before, strict=True)]
    results["apply_fleets_cpu_s"] = fleets_cpu
    results["apply_fleet_cpu_s"] = sum(fleets_cpu)
    results["apply_s"] = seconds
    results["tasks_per_s"] = total / seconds
    results["apply_cpu_s"] = cpu_after - cpu_before
    results["apply_orphaned"] = await asyncio.to_thread(task_count, metrics_url, "orphaned")
    results["apply_messages"] = messages_summary(
        messages_before, await asyncio.to_thread(session_messages, metrics_url)
    )

    if len(fleets) > 1:
        await kill_small_fleet(args, client, timeline, fleets, results)

    scale_started = time.monotonic()
    await client.call(
        "Scale", {"replicas": {f"scale-{i}": 0 for i in range(args.services)}}, timeout=120
    )
    await wait_until(client, timeline, "scale to 0", lambda r: r == 0, args.timeout)
    results["scale_down_s"] = time.monotonic() - scale_started
    deadline = time.monotonic() + args.timeout
    while await asyncio.to_thread(task_count, metrics_url):
        if time.monotonic() > deadline:
            raise NotConverged(f"tasks not deleted after {args.timeout:.0f}s")
        # Not faster: a scrape renders every node's and task's metrics on the manager
        # (~0.1 s of its CPU with 1,000 nodes), and scraping at 10 Hz slowed the very
        # deletions it timed. Prometheus scrapes every 15-60 s.
        await asyncio.sleep(SCRAPE_PERIOD)
    results["scale_down_gone_s"] = time.monotonic() - scale_started
    await channel.close()


async def kill_small_fleet(
    args: argparse.Namespace,
    client: Client,
    timeline: Timeline,
    fleets: list[subprocess.Popen[bytes]],
    results: dict[str, Any],
) -> None:
    total = args.services * args.replicas
    small_fleet = fleets[-1]
    small_fleet.send_signal(signal.SIGKILL)
    small_fleet.wait()
    killed = time.monotonic()

    # The dead nodes' tasks count as running until the manager notices (the
    # heartbeat grace); once every dead node is down its tasks are orphaned,
    # and ``running == total`` means their replacements run elsewhere.
    while await ready_nodes(client) > args.nodes - args.killed_nodes:
        timeline.add(await running_tasks(client), "dead nodes")
        await asyncio.sleep(0.1)
    results["detected_s"] = time.monotonic() - killed
    await wait_until(client, timeline, "dead nodes", lambda r: r == total, args.timeout)
    results["failover_s"] = time.monotonic() - killed


def plot(timeline: Timeline, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [p[0] for p in timeline.points]
    ys = [p[1] for p in timeline.points]
    ax.plot(xs, ys, linewidth=1.5)
    for phase in ("dead nodes", "scale to 0"):
        first = next((p[0] for p in timeline.points if p[2] == phase), None)
        if first is not None:
            ax.axvline(first, color="grey", linestyle="--", linewidth=0.8)
            ax.text(first, max(ys) * 0.5, f" {phase}", color="grey", fontsize=8)
    ax.set_xlabel("seconds since apply")
    ax.set_ylabel("running tasks")
    ax.set_title("shoal: 1,000 simulated nodes, 10 x 1,000 replicas")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


async def wait_for_nodes(address: str, count: int, timeout: float = 300) -> float:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            try:
                if await ready_nodes(client) >= count:
                    return time.monotonic() - started
            except ApiError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{count} nodes not ready after {timeout}s")
    finally:
        await channel.close()


async def get_token(address: str) -> str:
    channel = bench_channel(address)
    try:
        for _ in range(100):
            try:
                reply = await Client(channel, CONTROL_SERVICE).call("Token", {"role": "worker"})
                return str(reply["token"])
            except ApiError:
                await asyncio.sleep(0.2)
        raise TimeoutError("manager did not answer")
    finally:
        await channel.close()


def start_processes(
    args: argparse.Namespace, root: Path, address: str, log: Any
) -> tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]], list[subprocess.Popen[bytes]]]:
    """The manager and the fleet processes; every process started, to stop later."""
    shoal = [sys.executable, "-m", "shoal"]
    env = {**os.environ, "SHOAL_LOG_LEVEL": "warning"}
    procs: list[subprocess.Popen[bytes]] = []
    manager = subprocess.Popen(
        [
            *shoal,
            "manager",
            "--store",
            f"sqlite:///{root / 'state.db'}",
            "--state-dir",
            str(root),
            "--listen",
            address,
            "--metrics-listen",
            f"127.0.0.1:{args.metrics_port}",
            "--heartbeat-period",
            f"{HEARTBEAT}s",
        ],
        stdout=log,
        stderr=log,
        env=env,
    )
    procs.append(manager)
    token = asyncio.run(get_token(address))
    sizes = [("big", args.nodes - args.killed_nodes), ("small", args.killed_nodes)]
    if args.fleets == 1:
        sizes = [("all", args.nodes)]
    fleets = []
    for name, count in sizes:
        fleet = subprocess.Popen(
            [
                *shoal,
                "agent",
                "--manager",
                address,
                "--token",
                token,
                "--name",
                name,
                "--state-dir",
                str(root / name),
                "--sim-nodes",
                str(count),
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        procs.append(fleet)
        fleets.append(fleet)
    return manager, fleets, procs


def profile(out: str, number: int, manager: int, fleet: int) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` of the manager and of a fleet (pids), as folded stacks (text)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    search = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    binary = shutil.which("py-spy", path=search) or "py-spy"
    return [
        subprocess.Popen(
            [
                *(binary, "record", "--pid", str(pid), "--rate", "50", "--format", "raw"),
                *("--output", str(Path(out) / f"run{number}-{name}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in (("manager", manager), ("fleet", fleet))
    ]


def stop(procs: list[subprocess.Popen[bytes]], signum: int = signal.SIGTERM) -> None:
    """Signal each process still running (in order), then wait for each (killed after 30 s).
    py-spy writes its file on SIGINT."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


@contextlib.contextmanager
def held(lock: str | None) -> Any:
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def one_run(args: argparse.Namespace, number: int) -> bool:
    """One complete run: start everything, measure, stop; print its figures. Converged?"""
    args.port = free_port()
    args.metrics_port = free_port()
    address = f"127.0.0.1:{args.port}"
    metrics_url = f"http://127.0.0.1:{args.metrics_port}/metrics"
    results: dict[str, Any] = {}
    load_before = load_average()
    error = ""
    join_s = float("nan")
    peak_rss = 0
    cpu_total = 0.0
    quantiles: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as state:
        root = Path(state)
        os.environ["SHOAL_STATE_DIR"] = state  # bench_channel finds the admin bundle here
        procs: list[subprocess.Popen[bytes]] = []
        log = (root / "bench.log").open("wb")
        try:
            manager, fleets, procs = start_processes(args, root, address, log)
            join_s = asyncio.run(wait_for_nodes(address, args.nodes, args.timeout))
            try:
                asyncio.run(
                    scenario(args, number, metrics_url, address, manager.pid, fleets, results)
                )
            except NotConverged as exc:
                error = str(exc)
            cpu_total, peak_rss = process_usage(manager.pid)
            with contextlib.suppress(OSError):
                quantiles = reconcile_quantiles(metrics_url)
        except (TimeoutError, ApiError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if error and not args.quiet:
                log.flush()
                lines = (root / "bench.log").read_text(errors="replace").splitlines()
                print("\n".join(lines[-20:]), file=sys.stderr)
            stop(procs[::-1])
            log.close()
    if not args.quiet and not error:
        print_table(args, join_s, results, peak_rss, cpu_total, quantiles)
        if plot(results["timeline"], OUT / "scale.png"):
            print(f"plot: {OUT / 'scale.png'}")
    orchestrator = quantiles.get("orchestrator", (float("nan"),) * 2)[1] * 1000
    scheduler = quantiles.get("scheduler", (float("nan"),) * 2)[1] * 1000
    print(
        f"scale-run: run={number} fleets={args.fleets} nodes={args.nodes} "
        f"tasks={args.services * args.replicas} converged={'no' if error else 'yes'} "
        f"tasks_per_s={results.get('tasks_per_s', 0):.0f} apply_s={results.get('apply_s', 0):.2f} "
        f"orphaned_in_apply={results.get('apply_orphaned', -1)} "
        f"failover_s={results.get('failover_s', float('nan')):.1f} "
        f"scale_down_s={results.get('scale_down_gone_s', float('nan')):.1f} "
        f"rss_mb={peak_rss / 1e6:.0f} rss_idle_mb={results.get('idle_rss', 0) / 1e6:.0f} "
        f"rss_applied_mb={results.get('apply_rss', 0) / 1e6:.0f} manager_cpu_s={cpu_total:.1f} "
        f"apply_cpu_s=manager:{results.get('apply_cpu_s', float('nan')):.1f},fleets:"
        + "+".join(f"{c:.1f}" for c in results.get("apply_fleets_cpu_s", []))
        + " idle_cores="
        + "+".join(f"{c:.2f}" for c in results.get("idle_cores", []))
        + " "
        f"p99_ms=orchestrator:{orchestrator:.0f},scheduler:{scheduler:.0f} "
        f"apply_messages={results.get('apply_messages', '-')} "
        f"load={load_before}->{load_average()}" + (f" error={error!r}" if error else ""),
        flush=True,
    )
    return not error


def print_table(
    args: argparse.Namespace,
    join_s: float,
    results: dict[str, Any],
    peak_rss: int,
    cpu_total: float,
    quantiles: dict[str, tuple[float, float]],
) -> None:
    total = args.services * args.replicas
    grace = 3 * HEARTBEAT
    rows = [
        (f"{args.nodes} simulated nodes joined (s)", f"{join_s:.1f}", ""),
        (
            f"apply {args.services} x {args.replicas} → all running (s)",
            f"{results['apply_s']:.2f}",
            "",
        ),
        ("tasks/s, apply → running", f"{results['tasks_per_s']:.0f}", "goal ≥ 2000"),
        ("manager CPU during that (s)", f"{results['apply_cpu_s']:.1f}", ""),
        ("simulated nodes' CPU during that (s)", f"{results['apply_fleet_cpu_s']:.1f}", ""),
        ("orphaned tasks after the apply", f"{results['apply_orphaned']}", "goal 0"),
    ]
    if "detected_s" in results:
        rows += [
            (
                f"{args.killed_nodes} nodes SIGKILLed → all marked down (s)",
                f"{results['detected_s']:.1f}",
                f"heartbeat grace {grace:.0f}",
            ),
            (
                f"{args.killed_nodes} nodes SIGKILLed → their tasks running elsewhere (s)",
                f"{results['failover_s']:.1f}",
                f"goal ≤ {grace + 5:.0f} (grace {grace:.0f} + 5)",
            ),
        ]
    rows += [
        (f"scale {total} → 0: none running (s)", f"{results['scale_down_s']:.2f}", ""),
        (f"scale {total} → 0: every task deleted (s)", f"{results['scale_down_gone_s']:.1f}", ""),
        ("manager peak RSS (MB)", f"{peak_rss / 1e6:.0f}", "goal ≤ 300"),
        ("manager CPU, whole run (s)", f"{cpu_total:.1f}", ""),
    ]
    for controller, (p50, p99) in sorted(quantiles.items()):
        rows.append(
            (f"reconcile {controller} p50 / p99 (ms)", f"{p50 * 1000:.1f} / {p99 * 1000:.1f}", "")
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>14}  note")
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>14}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fleets", type=int, choices=(1, 2), default=2)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--killed-nodes", type=int, default=100)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds each phase may take (default 180)"
    )
    parser.add_argument("--lock", help="flock this file for each run (shared machines)")
    parser.add_argument("--quiet", action="store_true", help="only the scale-run summary lines")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record manager and fleet into DIR")
    args = parser.parse_args()
    converged = 0
    for number in range(1, args.runs + 1):
        with held(args.lock):
            converged += one_run(args, number)
    return 0 if converged == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
