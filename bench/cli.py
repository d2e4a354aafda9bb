"""How fast the ``shoal`` command answers: wall time of whole CLI runs.

Times, as a user's shell would, the console script ``shoal`` of this
environment for ``shoal --help``, ``shoal version --client``, ``shoal get
services`` against a local ``shoal up`` (with a few services in it) and
``shoal apply --dry-run`` of those services' spec files, beside
``python -c pass`` with the same interpreter as the floor no Python CLI can
go under. Each command runs ``--runs`` times after one untimed warm-up run
(which also writes the bytecode caches, as a user's first run would); the
median and the maximum are printed with every run, and the median CPU time
(user + system, from the kernel's accounting of the finished child) beside it:
on a machine shared with other work the CPU time moves less than the wall time.
The load average is printed at the start and the end.

With ``--baseline DIR`` (a checkout of another shoal, e.g. ``git worktree add
/tmp/base main``), every command also runs with that tree first on
``PYTHONPATH``, alternating with this one run by run, so both see the same load.

Then, for ``get services``, where its import time goes: the top-level
modules of ``python -X importtime``, cumulative, median over the runs.

With ``--tasks N`` it measures instead ``shoal get tasks`` of one service of N
``sim`` replicas (the local agent runs 256, the rest wait pending): the wall
and CPU time of the whole listing printed as a table and as ``-o json``, the
lines or items it printed, and the CPU time the manager spent answering (from
``/proc/PID/stat`` of ``shoal up``).

    .venv/bin/python bench/cli.py [--runs 10] [--baseline DIR]
    .venv/bin/python bench/cli.py --tasks 100000 --runs 3

``PYTHONDONTWRITEBYTECODE`` is removed from the commands' environment (it
makes every run compile shoal from source, which no installed CLI does); the
benchmark says so when it was set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from harness import free_port, open_shoal_up

SHOAL = str(Path(sys.executable).with_name("shoal"))
SERVICE = """\
apiVersion: shoal/v1
kind: Service
metadata: {{name: cli-bench-{index}}}
spec:
  replicas: 1
  template: {{command: [sleep, "3600"]}}
"""


def environment(address: str) -> dict[str, str]:
    # The state dir of the benchmark's `shoal up` holds the admin bundle the CLI signs in with.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SHOAL_") or k == "SHOAL_STATE_DIR"
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["SHOAL_SERVER"] = address
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (which must succeed)."""
    cpu = children_cpu()
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr!r}")
    return elapsed, children_cpu() - cpu


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def import_breakdown(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median cumulative import time (ms) of each top-level module ``argv`` imports."""
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        for line in result.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            _, cumulative, name = line[len("import time:") :].split("|")
            if not name.startswith("  "):  # nested imports are indented further
                samples[name.strip()].append(int(cumulative) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


HUGE = """\
apiVersion: shoal/v1
kind: Service
metadata: {{name: cli-bench-huge}}
spec:
  replicas: {replicas}
  template: {{runtime: sim, command: [sim]}}
"""


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shoal_up_pid(state: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"up" in words and state.encode() in words:
                return int(entry.name)
    raise SystemExit("the benchmark's shoal up is not in /proc")


def huge_listing(address: str, tasks: int, runs: int) -> None:
    """``get tasks`` of a service of ``tasks`` replicas: table and JSON, ``runs`` each."""
    env = environment(address)
    manager = shoal_up_pid(os.environ["SHOAL_STATE_DIR"])
    with tempfile.TemporaryDirectory() as specs:
        spec = Path(specs) / "huge.yaml"
        spec.write_text(HUGE.format(replicas=tasks))
        started = time.monotonic()
        wall([SHOAL, "apply", "-f", str(spec)], env)
        listed = [SHOAL, "get", "tasks", "--service", "cli-bench-huge"]
        while True:
            result = subprocess.run(
                [*listed, "--limit", "1"], env=env, capture_output=True, text=True, check=False
            )
            more = result.stderr.split(" more task", 1)[0].rsplit("\n", 1)[-1]
            if more.isdigit() and int(more) + 1 >= tasks:
                break
            time.sleep(2)
        print(f"{tasks} tasks written {time.monotonic() - started:.0f} s after the apply")
        print(f"load average: {load()}\n")
        print(f"{'listing':<28} {'wall s':>7} {'CLI CPU s':>10} {'manager CPU s':>14}  printed")
        for _ in range(runs):
            for fmt in ("table", "json"):
                before = process_cpu(manager)
                cpu = children_cpu()
                begun = time.perf_counter()
                got = subprocess.run([*listed, "-o", fmt], env=env, capture_output=True)
                elapsed = time.perf_counter() - begun
                if got.returncode != 0:
                    raise SystemExit(f"get tasks -o {fmt} failed: {got.stderr[-500:]!r}")
                if fmt == "json":
                    printed = f"{len(json.loads(got.stdout)['items'])} items"
                else:
                    printed = f"{len(got.stdout.splitlines())} lines"
                print(
                    f"get tasks -o {fmt:<16} {elapsed:>7.2f} {children_cpu() - cpu:>10.2f} "
                    f"{process_cpu(manager) - before:>14.2f}  {printed}"
                )
        print(f"\nload average: {load()}")
        subprocess.run(
            [SHOAL, "delete", "service", "cli-bench-huge", "--no-wait"],
            env=env,
            capture_output=True,
            check=False,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--services", type=int, default=3, help="services listed by get")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="also run the shoal of this tree, paired"
    )
    parser.add_argument(
        "--tasks", type=int, metavar="N", help="measure get tasks of N replicas instead"
    )
    args = parser.parse_args()
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        print("note: PYTHONDONTWRITEBYTECODE was set; the commands run without it\n")
    print(f"load average at the start: {load()}")
    if args.tasks:
        with open_shoal_up(free_port(), "sim") as address:
            huge_listing(address, args.tasks, args.runs)
        return 0

    with open_shoal_up(free_port(), "process") as address, tempfile.TemporaryDirectory() as specs:
        env = environment(address)
        for index in range(args.services):
            (Path(specs) / f"{index}.yaml").write_text(SERVICE.format(index=index))
        wall([SHOAL, "apply", "-f", specs], env)
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "shoal --help": [SHOAL, "--help"],
            "shoal version --client": [SHOAL, "version", "--client"],
            "shoal get services": [SHOAL, "get", "services"],
            "shoal apply --dry-run": [SHOAL, "apply", "-f", specs, "--dry-run"],
        }
        trees = {"": env}
        if args.baseline:
            trees = {"baseline ": {**env, "PYTHONPATH": str(args.baseline.resolve())}, **trees}
        figures: dict[str, list[tuple[float, float]]] = {}
        for label, argv in commands.items():
            for tree, tree_env in trees.items():
                wall(argv, tree_env)  # warm-up: bytecode caches, page cache
                figures[tree + label] = []
            for _ in range(args.runs):
                for tree, tree_env in trees.items():
                    elapsed, cpu = wall(argv, tree_env)
                    figures[tree + label].append((elapsed * 1000, cpu * 1000))
        breakdown = import_breakdown(["-m", "shoal", "get", "services"], env, args.runs)
        subprocess.run(
            [SHOAL, "delete", "service", *[f"cli-bench-{i}" for i in range(args.services)]],
            env=env,
            capture_output=True,
            check=False,
        )

    print(f"load average at the end: {load()}\n")
    print(f"{'command':<35} {'median ms':>10} {'max ms':>8} {'CPU ms':>7}   runs (wall ms)")
    for label, pairs in figures.items():
        values = [w for w, _ in pairs]
        cpu = statistics.median(c for _, c in pairs)
        runs = " ".join(f"{v:.0f}" for v in values)
        print(
            f"{label:<35} {statistics.median(values):>10.1f} {max(values):>8.1f} {cpu:>7.1f}"
            f"   {runs}"
        )
    print("\nshoal get services, import time by top-level module (cumulative, median ms):")
    for name, ms in sorted(breakdown.items(), key=lambda item: -item[1])[:12]:
        print(f"  {name:<40} {ms:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
