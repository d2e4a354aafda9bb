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

Part 2 (shoal alone, through the Control API, skipped with ``--no-api``):
seconds from the Apply call until all N replicas report ``running``, and for
``--applies`` one-replica services the latency from Apply until the first
task reports ``running`` (p50, p99).

    .venv/bin/python bench/single_node.py [--replicas 200] [--rounds 5] [--applies 50]
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
from collections.abc import Iterator
from contextlib import contextmanager
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


def time_until_running(argv: list[str], env: dict[str, str], marker: bytes, n: int) -> float:
    """Seconds from starting ``argv`` until ``n`` marked sleeps are in the process table."""
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
    _, err = command.communicate(timeout=TIMEOUT)
    if command.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode()[-2000:]}")
    return elapsed


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
def open_supervisord() -> Iterator[tuple[Path, Path]]:
    """A real supervisord in a temporary directory: its config file and include dir."""
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
            yield conf, root / "conf.d"
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


def shoal_round(env: dict[str, str], spec_dir: Path, index: int, n: int) -> float:
    name, mark = f"bench-{index}", f"shoal-{index}"
    spec = spec_dir / f"{name}.yaml"
    spec.write_text(SHOAL_SPEC.format(name=name, n=n, round=mark))
    seconds = time_until_running([SHOAL, "apply", "-f", str(spec)], env, mark_of(mark), n)
    subprocess.run(
        [SHOAL, "delete", "service", name, "--timeout", "2m"],
        env=env,
        check=True,
        capture_output=True,
    )
    wait_none(mark_of(mark))
    return seconds


def supervisord_round(conf: Path, include: Path, index: int, n: int) -> float:
    name, mark = f"bench{index}", f"supervisord-{index}"
    program = include / f"{name}.conf"
    program.write_text(SUPERVISOR_PROGRAM.format(name=name, n=n, round=mark, dir=include.parent))
    update = [SUPERVISORCTL, "-c", str(conf), "update"]
    seconds = time_until_running(update, user_env(), mark_of(mark), n)
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


def compare(address: str, replicas: int, rounds: int) -> list[tuple[float, float]]:
    # The state dir of the benchmark's `shoal up` holds the admin bundle the CLI signs in with.
    env = {**user_env(), "SHOAL_SERVER": address, "SHOAL_STATE_DIR": os.environ["SHOAL_STATE_DIR"]}
    pairs: list[tuple[float, float]] = []
    with open_supervisord() as (conf, include), tempfile.TemporaryDirectory() as specs:
        for index in range(rounds):
            # Alternate which side goes first, so neither always runs second.
            if index % 2 == 0:
                shoal_s = shoal_round(env, Path(specs), index, replicas)
                supervisord_s = supervisord_round(conf, include, index, replicas)
            else:
                supervisord_s = supervisord_round(conf, include, index, replicas)
                shoal_s = shoal_round(env, Path(specs), index, replicas)
            pairs.append((shoal_s, supervisord_s))
            print(
                f"round {index + 1}: shoal {shoal_s:.3f} s, supervisord {supervisord_s:.3f} s, "
                f"shoal/supervisord {shoal_s / supervisord_s:.2f}",
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
    with open_shoal_up(args.port, "process") as address:
        pairs = compare(address, args.replicas, args.rounds)
        results = (
            None if args.no_api else asyncio.run(api_bench(address, args.replicas, args.applies))
        )

    shoal_all = [s for s, _ in pairs]
    super_all = [s for _, s in pairs]
    ratios = [s / v for s, v in pairs]
    print(f"\n{args.replicas} sleeps, from the user's command until all are in the process table")
    print(f"{'':<22} {'median s':>9}   runs (s)")
    print(
        f"{'shoal apply':<22} {statistics.median(shoal_all):>9.3f}   "
        + " ".join(f"{s:.3f}" for s in shoal_all)
    )
    print(
        f"{'supervisorctl update':<22} {statistics.median(super_all):>9.3f}   "
        + " ".join(f"{s:.3f}" for s in super_all)
    )
    print(
        f"{'shoal/supervisord':<22} {statistics.median(ratios):>9.2f}   "
        + " ".join(f"{r:.2f}" for r in ratios)
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
