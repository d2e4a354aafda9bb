#!/usr/bin/env python3
"""Three etcd members, three managers and three agents on this machine, to try HA.

    python3 deploy/ha.py up [--dir DIR] [--base-port PORT]   start them all (in the background)
    python3 deploy/ha.py status                              processes, and shoal cluster status
    python3 deploy/ha.py stop|kill|start NAME                e.g. stop manager-1 to see a failover
    python3 deploy/ha.py down                                delete the services, stop everything

Needs ``etcd`` (Debian: ``etcd-server``) and shoal installed (``python3
deploy/dev.py up`` makes ``.venv``; the script uses the ``shoal`` beside the
Python running it, else ``.venv/bin/shoal``, else the one on PATH). State, logs
and the process table live in ``DIR`` (default ``.shoal-ha/`` in the
repository). Ports, from ``--base-port`` B (default 7430): manager i (0, 1,
2) listens on B+10i, serves metrics and service discovery on B+10i+1 and
joins agents on B+10i+2; etcd member i serves clients on B+30+2i and peers on
B+31+2i. Agents n1..n3 listen for metrics at 127.0.0.2..4, any free port.

The processes run in sessions of their own, so they outlive this script;
``down`` stops them (by the pids it recorded, nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = 3
AGENTS = ("n1", "n2", "n3")


def shoal_binary() -> str:
    for candidate in (Path(sys.executable).parent / "shoal", ROOT / ".venv" / "bin" / "shoal"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("shoal")
    if found is None:
        sys.exit("no shoal command: run python3 deploy/dev.py up once, or pipx install .")
    return found


class Lab:
    def __init__(self, directory: Path, base: int | None) -> None:
        self.dir = directory
        # The ports of a running lab are the ones it was started with.
        recorded = directory / "base-port"
        if base is None:
            base = int(recorded.read_text()) if recorded.exists() else 7430
        self.base = base
        self.table = directory / "processes.json"
        self.shoal = shoal_binary()

    # ------------------------------------------------------------ layout

    def manager_port(self, i: int) -> int:
        return self.base + 10 * i

    def managers(self) -> str:
        return ",".join(f"127.0.0.1:{self.manager_port(i)}" for i in range(MEMBERS))

    def etcd_urls(self) -> str:
        return ",".join(f"127.0.0.1:{self.base + 30 + 2 * i}" for i in range(MEMBERS))

    def env(self) -> dict[str, str]:
        """What the CLI needs here: manager-1's admin bundle, every manager's address."""
        return {
            **os.environ,
            "SHOAL_STATE_DIR": str(self.dir / "manager-1"),
            "SHOAL_SERVER": self.managers(),
        }

    def commands(self) -> dict[str, list[str]]:
        etcd = shutil.which("etcd")
        if etcd is None:
            sys.exit("etcd is not installed (Debian: apt-get install etcd-server)")
        peers = ",".join(
            f"e{i + 1}=http://127.0.0.1:{self.base + 31 + 2 * i}" for i in range(MEMBERS)
        )
        table: dict[str, list[str]] = {}
        for i in range(MEMBERS):
            client, peer = self.base + 30 + 2 * i, self.base + 31 + 2 * i
            table[f"etcd-{i + 1}"] = [
                etcd,
                f"--name=e{i + 1}",
                f"--data-dir={self.dir / f'etcd-{i + 1}'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={peers}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=shoal-ha",
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=100000",
            ]
        for i in range(MEMBERS):
            port = self.manager_port(i)
            table[f"manager-{i + 1}"] = [
                self.shoal,
                "manager",
                f"--store=etcd://{self.etcd_urls()}/shoal",
                f"--state-dir={self.dir / f'manager-{i + 1}'}",
                f"--listen=127.0.0.1:{port}",
                f"--advertise=127.0.0.1:{port}",
                f"--metrics-listen=127.0.0.1:{port + 1}",
                f"--data-key-file={self.dir / 'datakey'}",
            ]
        token = self.dir / "worker.token"
        joins_with_file = "--token-file" in self.run_shoal("agent", "--help").stdout
        for number, name in enumerate(AGENTS, start=2):
            credential = (
                [f"--token-file={token}"]
                if joins_with_file
                else [f"--token={token.read_text().strip() if token.exists() else ''}"]
            )
            table[f"agent-{name}"] = [
                self.shoal,
                "agent",
                f"--manager={self.managers()}",
                *credential,
                f"--name={name}",
                f"--state-dir={self.dir / f'agent-{name}'}",
                f"--metrics-listen=127.0.0.{number}:0",
            ]
        return table

    # --------------------------------------------------------- processes

    def recorded(self) -> dict[str, dict[str, object]]:
        if not self.table.exists():
            return {}
        loaded: dict[str, dict[str, object]] = json.loads(self.table.read_text())
        return loaded

    def record(self, table: dict[str, dict[str, object]]) -> None:
        self.table.write_text(json.dumps(table, indent=2))

    def start(self, name: str, args: list[str] | None = None) -> None:
        table = self.recorded()
        if args is None:
            args = [str(a) for a in table[name]["args"]]  # type: ignore[attr-defined]
        log = (self.dir / f"{name}.log").open("ab")
        env = {**os.environ, "SHOAL_LOG_FORMAT": "json"}
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        table[name] = {"pid": proc.pid, "args": args, "log": str(self.dir / f"{name}.log")}
        self.record(table)
        print(f"started {name} (pid {proc.pid}, log {self.dir / f'{name}.log'})", flush=True)

    def alive(self, name: str) -> bool:
        entry = self.recorded().get(name)
        if entry is None:
            return False
        pid = int(entry["pid"])  # type: ignore[call-overload]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"

    def signal(self, name: str, signum: int, wait: float = 15.0) -> None:
        entry = self.recorded().get(name)
        if entry is None or not self.alive(name):
            print(f"{name} is not running")
            return
        pid = int(entry["pid"])  # type: ignore[call-overload]
        os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while self.alive(name) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if self.alive(name):
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {name}", flush=True)

    def run_shoal(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.shoal, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait(self, what: str, check: object, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(0.3)
        sys.exit(f"timed out waiting for {what}; see the logs in {self.dir}")

    # ---------------------------------------------------------- commands

    def up(self) -> int:
        if any(self.alive(name) for name in self.recorded()):
            sys.exit(f"already running (python3 deploy/ha.py --dir {self.dir} down first)")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "base-port").write_text(str(self.base))
        table = self.commands()
        for name in [n for n in table if n.startswith("etcd-")]:
            self.start(name, table[name])
        for i in range(MEMBERS):
            name = f"manager-{i + 1}"
            self.start(name, table[name])
            # One at a time: the first creates the data key the others read.
            port = self.manager_port(i)
            self.wait(
                f"{name} to answer",
                lambda port=port: (
                    self.run_shoal("version", f"--server=127.0.0.1:{port}").returncode == 0
                ),
            )
        self.wait("a leader", lambda: self.run_shoal("cluster", "status").returncode == 0)
        token = self.run_shoal("token", "worker")
        if token.returncode != 0:
            sys.exit(f"shoal token worker failed: {token.stderr}")
        (self.dir / "worker.token").write_text(token.stdout.strip() + "\n")
        (self.dir / "worker.token").chmod(0o600)
        table = self.commands()  # the agents' lines need the token
        for name in [n for n in table if n.startswith("agent-")]:
            self.start(name, table[name])
        self.wait(
            "three nodes ready",
            lambda: self.ready_nodes() >= len(AGENTS),
        )
        print(self.run_shoal("cluster", "status").stdout)
        print(
            f"""three etcd members, three managers and three agents are running.
  use the CLI:        export SHOAL_STATE_DIR={self.dir / "manager-1"} SHOAL_SERVER={self.managers()}
  a failover:         python3 deploy/ha.py --dir {self.dir} stop manager-N  (the leader above)
  metrics, discovery: http://127.0.0.1:{self.base + 1}/metrics, /prometheus/sd
  stop it all:        python3 deploy/ha.py --dir {self.dir} down"""
        )
        return 0

    def ready_nodes(self) -> int:
        nodes = self.run_shoal("get", "nodes", "-o", "json")
        if nodes.returncode != 0:
            return 0
        items = json.loads(nodes.stdout or "{}").get("items", [])
        return sum(1 for node in items if node["status"]["state"] == "ready")

    def status(self) -> int:
        for name, entry in self.recorded().items():
            state = "running" if self.alive(name) else "stopped"
            print(f"{name:12} {state:8} pid {entry['pid']}")
        result = self.run_shoal("cluster", "status")
        print(result.stdout or result.stderr)
        return result.returncode

    def down(self) -> int:
        services = self.run_shoal("get", "services", "-o", "json")
        if services.returncode == 0:
            for item in json.loads(services.stdout or "{}").get("items", []):
                self.run_shoal("delete", "service", item["metadata"]["name"], timeout=60)
        for name in reversed(list(self.recorded())):
            self.signal(name, signal.SIGTERM)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/ha.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=ROOT / ".shoal-ha")
    parser.add_argument("--base-port", type=int, default=None, help="default 7430")
    parser.add_argument("command", choices=["up", "status", "stop", "kill", "start", "down"])
    parser.add_argument("name", nargs="?")
    args = parser.parse_args()
    lab = Lab(args.dir.resolve(), args.base_port)
    if args.command in ("stop", "kill", "start"):
        if not args.name or args.name not in lab.recorded():
            parser.error(f"name one of: {', '.join(lab.recorded()) or '(nothing recorded)'}")
        if args.command == "start":
            lab.start(args.name)
        else:
            lab.signal(args.name, signal.SIGTERM if args.command == "stop" else signal.SIGKILL)
        return 0
    return {"up": lab.up, "status": lab.status, "down": lab.down}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
