"""Single node: 200 ``sleep`` processes started by shoal and by supervisord, side by side.

Part 1 (the comparison). A real ``shoal up`` (manager + agent, SQLite store,
process runtime) and a real ``supervisord`` (from PyPI) run side by side, both
idle. Each round times, from the moment the user's command is started until
all N ``sleep 3600`` processes of the round are in the process table:

- shoal: ``shoal apply -f bench.yaml`` (a new service with N replicas);
- supervisord: a new program file with ``numprocs=N`` in its include
  directory, then ``supervisorctl update`` (which adds and starts it).

Both are measured the same way, from the outside: ``/proc`` is scanned for
processes whose command line is ``sleep 3600`` and whose environment carries
the round's marker (``BENCH_ROUND=…``, set in both specs). The clock stops
when N distinct such processes exist at once. Rounds alternate between the two
so that each pair shares the machine's load; every round is printed, then the
medians and shoal/supervisord per pair. Between rounds each side removes its
processes (``shoal delete``, ``supervisorctl update`` without the file) and
the next round starts only when they are gone.

Beside each round's wall time it prints CPU seconds (user + system, from
``/proc/PID/stat`` and the command's rusage) of the command itself and of the
daemon that did the work (``shoal up``'s one process; supervisord) over the
timed part, and the load average before and after: wall times on a shared
machine are noisy, CPU seconds much less.

Part 2 (shoal alone, through the Control API, skipped with ``--no-api``):
seconds from the Apply call until all N replicas report ``running``, and for
``--applies`` one-replica services the latency from Apply until the first
task reports ``running`` (p50, p99).

    .venv/bin/python bench/single_node.py [--replicas 200] [--rounds 5] [--applies 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import bench_channel, free_port, open_shoal_up

from shoal.api.transport import CONTROL_SERVICE, Client

BIN = Path(sys.executable).parent
SHOAL = str(BIN / "shoal")
SUPERVISORD = str(BIN / "supervisord")
SUPERVISORCTL = str(BIN / "supervisorctl")
SLEEP_ARGV = b"3600\0"
TIMEOUT = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ process table


def sleeps_with(marker: bytes) -> int:
    """How many ``sleep 3600`` processes carry ``marker`` in their environment now."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read()
            if not argv.endswith(SLEEP_ARGV) or os.path.basename(argv.split(b"\0")[0]) != b"sleep":
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    count += 1
        except OSError:
            continue  # exited while we looked
    return count


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Round:
    """One side's round: wall seconds, CPU seconds of the command and of the daemon."""

    wall: float
    command_cpu: float
    daemon_cpu: float

    def __str__(self) -> str:
        cpu = f"CPU: command {self.command_cpu:.2f}, daemon {self.daemon_cpu:.2f}"
        return f"{self.wall:.3f} s ({cpu})"


def time_until_running(
    argv: list[str], env: dict[str, str], marker: bytes, n: int, daemon: int
) -> Round:
    """How long from starting ``argv`` until ``n`` marked sleeps are in the process table,
    and the CPU the command and ``daemon`` (a pid) used meanwhile."""
    children_before, daemon_before = children_cpu(), cpu_seconds(daemon)
    started = time.perf_counter()
    command = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while sleeps_with(marker) < n:
        if time.perf_counter() - started > TIMEOUT:
            command.kill()
            raise SystemExit(f"{argv[0]}: {n} processes not running after {TIMEOUT:.0f}s")
        if command.poll() not in (None, 0):
            _, err = command.communicate()
            raise SystemExit(f"{' '.join(argv)} failed: {err.decode()[-2000:]}")
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    daemon_cpu = cpu_seconds(daemon) - daemon_before
    _, err = command.communicate(timeout=TIMEOUT)
    if command.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode()[-2000:]}")
    # The command was the only child reaped meanwhile: its CPU, to its end.
    return Round(elapsed, children_cpu() - children_before, daemon_cpu)


def wait_none(marker: bytes) -> None:
    deadline = time.monotonic() + TIMEOUT
    while sleeps_with(marker):
        if time.monotonic() > deadline:
            raise SystemExit(f"processes marked {marker!r} still running after {TIMEOUT:.0f}s")
        time.sleep(0.05)


# -------------------------------------------------------------- supervisord


SUPERVISORD_CONF = """\
[unix_http_server]
file = {dir}/supervisor.sock

[supervisord]
logfile = {dir}/supervisord.log
pidfile = {dir}/supervisord.pid
childlogdir = {dir}/logs
nodaemon = true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{dir}/supervisor.sock

[include]
files = {dir}/conf.d/*.conf
"""

# Like shoal's tasks: output to a log file per process, restarted on exit,
# counted as started at once (shoal does not wait a second either).
SUPERVISOR_PROGRAM = """\
[program:{name}]
command = sleep 3600
numprocs = {n}
process_name = %(program_name)s-%(process_num)d
environment = BENCH_ROUND="{round}"
autostart = true
autorestart = true
startsecs = 0
stdout_logfile = {dir}/logs/%(program_name)s-%(process_num)d.log
redirect_stderr = true
"""


@contextmanager
def open_supervisord() -> Iterator[tuple[Path, Path, int]]:
    """A real supervisord in a temporary directory: its config file, include dir and pid."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "conf.d").mkdir()
        (root / "logs").mkdir()
        conf = root / "supervisord.conf"
        conf.write_text(SUPERVISORD_CONF.format(dir=root))
        with (root / "stdout.log").open("w") as log:
            daemon = subprocess.Popen(
                [SUPERVISORD, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 30
            while (
                subprocess.run(
                    [SUPERVISORCTL, "-c", str(conf), "pid"], capture_output=True, check=False
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit(
                        "supervisord did not start: " + (root / "stdout.log").read_text()
                    )
                time.sleep(0.1)
            yield conf, root / "conf.d", daemon.pid
        finally:
            daemon.terminate()
            daemon.wait(60)


# ------------------------------------------------------------------- rounds


SHOAL_SPEC = """\
apiVersion: shoal/v1
kind: Service
metadata: {{name: {name}}}
spec:
  replicas: {n}
  template:
    command: [sleep, "3600"]
    env: {{BENCH_ROUND: "{round}"}}
"""


def shoal_round(env: dict[str, str], spec_dir: Path, index: int, n: int, daemon: int) -> Round:
    name, mark = f"bench-{index}", f"shoal-{index}"
    spec = spec_dir / f"{name}.yaml"
    spec.write_text(SHOAL_SPEC.format(name=name, n=n, round=mark))
    apply = [SHOAL, "apply", "-f", str(spec)]
    seconds = time_until_running(apply, env, mark_of(mark), n, daemon)
    subprocess.run(
        [SHOAL, "delete", "service", name, "--timeout", "2m"],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_none(mark_of(mark))
    return seconds


def supervisord_round(conf: Path, include: Path, index: int, n: int, daemon: int) -> Round:
    name, mark = f"bench{index}", f"supervisord-{index}"
    program = include / f"{name}.conf"
    program.write_text(SUPERVISOR_PROGRAM.format(name=name, n=n, round=mark, dir=include.parent))
    update = [SUPERVISORCTL, "-c", str(conf), "update"]
    seconds = time_until_running(update, user_env(), mark_of(mark), n, daemon)
    program.unlink()
    subprocess.run(update, check=True, capture_output=True)
    wait_none(mark_of(mark))
    return seconds


def mark_of(mark: str) -> bytes:
    return f"BENCH_ROUND={mark}".encode()


def user_env() -> dict[str, str]:
    """A user's environment for both CLIs: Python keeps its bytecode caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def shoal_pid(state_dir: str) -> int:
    """The pid of the ``shoal up`` whose command line names ``state_dir``."""
    wanted = state_dir.encode()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                if b"up" in argv and wanted in argv:
                    return int(name)
    raise SystemExit(f"no shoal up with state dir {state_dir} in the process table")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def compare(address: str, replicas: int, rounds: int) -> list[tuple[Round, Round]]:
    # The state dir of the benchmark's `shoal up` holds the admin bundle the CLI signs in with.
    state_dir = os.environ["SHOAL_STATE_DIR"]
    env = {**user_env(), "SHOAL_SERVER": address, "SHOAL_STATE_DIR": state_dir}
    shoal_daemon = shoal_pid(state_dir)
    pairs: list[tuple[Round, Round]] = []
    with open_supervisord() as (conf, include, daemon), tempfile.TemporaryDirectory() as specs:
        for index in range(rounds):
            before = load()
            # Alternate which side goes first, so neither always runs second.
            if index % 2 == 0:
                shoal = shoal_round(env, Path(specs), index, replicas, shoal_daemon)
                supervisord = supervisord_round(conf, include, index, replicas, daemon)
            else:
                supervisord = supervisord_round(conf, include, index, replicas, daemon)
                shoal = shoal_round(env, Path(specs), index, replicas, shoal_daemon)
            pairs.append((shoal, supervisord))
            print(
                f"round {index + 1} (load {before} -> {load()}): shoal {shoal}, "
                f"supervisord {supervisord}, shoal/supervisord {shoal.wall / supervisord.wall:.2f}",
                flush=True,
            )
    return pairs


# --------------------------------------------------------- part 2: the API


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


async def api_bench(address: str, replicas: int, applies: int) -> dict[str, float]:
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    results: dict[str, float] = {}

    started = time.perf_counter()
    await client.call("Apply", {"services": [service("bench-many", replicas)]})
    while await running(client, "bench-many") < replicas:
        await asyncio.sleep(0.01)
    results["all_running_s"] = time.perf_counter() - started
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the comparison")
    parser.add_argument("--applies", type=int, default=50)
    parser.add_argument("--no-api", action="store_true", help="skip part 2")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    if not shutil.which("sleep"):
        raise SystemExit("sleep is not on PATH")
    args.port = args.port or free_port()
    print(f"load average at the start: {load()}")
    with open_shoal_up(args.port, "process") as address:
        pairs = compare(address, args.replicas, args.rounds)
        results = (
            None if args.no_api else asyncio.run(api_bench(address, args.replicas, args.applies))
        )

    print(f"\n{args.replicas} sleeps, from the user's command until all are in the process table")
    print(f"(load average at the end: {load()})")
    print(f"{'':<34} {'median':>8}   runs")
    table = [
        ("shoal apply (s)", [s.wall for s, _ in pairs]),
        ("supervisorctl update (s)", [v.wall for _, v in pairs]),
        ("shoal/supervisord", [s.wall / v.wall for s, v in pairs]),
        ("CPU s: shoal apply (the CLI)", [s.command_cpu for s, _ in pairs]),
        ("CPU s: shoal up", [s.daemon_cpu for s, _ in pairs]),
        ("CPU s: supervisorctl", [v.command_cpu for _, v in pairs]),
        ("CPU s: supervisord", [v.daemon_cpu for _, v in pairs]),
    ]
    for label, values in table:
        print(
            f"{label:<34} {statistics.median(values):>8.3f}   "
            + " ".join(f"{v:.3f}" for v in values)
        )
    if results is not None:
        rows = [
            (
                f"{args.replicas} replicas: Apply → all running (s)",
                f"{results['all_running_s']:.2f}",
            ),
            ("Apply → first task running, p50 (ms)", f"{results['first_running_p50_ms']:.1f}"),
            ("Apply → first task running, p99 (ms)", f"{results['first_running_p99_ms']:.1f}"),
        ]
        print(f"\n{'shoal alone, through the Control API':<44} {'value':>10}")
        for label, value in rows:
            print(f"{label:<44} {value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
