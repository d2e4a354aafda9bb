"""A highly available shoal for fault tests: 3 etcd members, several managers, agents.

Every part is a real process: ``etcd`` members (``tests/etcdcluster.py``),
``python -m shoal manager --store etcd://...`` managers with a short lease, and
``python -m shoal agent`` agents with the process runtime, each given a single
manager address (they learn the others in their session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.security.contexts import Context, load_bundle
from tests.e2e.cluster import (
    HEARTBEAT,
    Daemon,
    free_port,
    processes_with_env,
    release_task_files,
    service_yaml,
    shoal_cmd,
    wait_for,
)
from tests.etcdcluster import EtcdCluster, etcd_cluster

LEASE_TTL = 2.0


@dataclass
class HACluster:
    root: Path
    etcd: EtcdCluster
    managers: dict[str, Daemon] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    join_ports: dict[str, int] = field(default_factory=dict)
    agents: dict[str, Daemon] = field(default_factory=dict)
    token: str = ""

    def address(self, manager: str) -> str:
        return f"127.0.0.1:{self.ports[manager]}"

    @property
    def addresses(self) -> list[str]:
        return [self.address(name) for name in self.managers]

    def join_address(self, manager: str) -> str:
        return f"127.0.0.1:{self.join_ports[manager]}"

    @property
    def credentials(self) -> Context:
        """An admin bundle: every manager writes one, all for the same CA."""
        for name in self.managers:
            path = self.root / name / "admin.yaml"
            if path.exists():
                return load_bundle(path)
        raise AssertionError("no manager wrote an admin bundle")

    def start_manager(self, name: str) -> Daemon:
        port = self.ports.setdefault(name, free_port())
        join_port = self.join_ports.setdefault(name, free_port())
        daemon = self.managers.get(name) or Daemon(
            name,
            # debug: the managers log every fenced write with its revision and term
            [
                "env",
                "SHOAL_LOG_LEVEL=debug",
                *shoal_cmd(
                    "manager",
                    "--store",
                    self.etcd.url("shoal"),
                    "--state-dir",
                    str(self.root / name),
                    "--data-key-file",
                    str(self.root / "datakey"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--join-listen",
                    f"127.0.0.1:{join_port}",
                    "--heartbeat-period",
                    f"{int(HEARTBEAT * 1000)}ms",
                    "--lease-ttl",
                    f"{int(LEASE_TTL * 1000)}ms",
                ),
            ],
            self.root / f"{name}.log",
        )
        self.managers[name] = daemon
        daemon.start()
        wait_for(lambda: self.status(name) is not None, 20, f"manager {name} to answer")
        return daemon

    def start_agent(self, name: str, manager: str, *extra: str) -> Daemon:
        """An agent told about ``manager`` only; ``extra``: more of its flags."""
        args = shoal_cmd(
            "agent",
            "--manager",
            self.address(manager),
            "--join",
            self.join_address(manager),
            "--token",
            self.token,
            "--name",
            name,
            "--state-dir",
            str(self.root / "agents" / name),
            *extra,
        )
        agent = Daemon(name, args, self.root / f"agent-{name}.log")
        self.agents[name] = agent
        agent.start()
        return agent

    # -------------------------------------------------------------- clients

    def call(self, manager: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
        from shoal.api.transport import CONTROL_SERVICE, Client, open_channel

        async def go() -> dict[str, Any]:
            channel = open_channel(self.address(manager), self.credentials)
            try:
                return await Client(channel, CONTROL_SERVICE).call(method, request, timeout=10)
            finally:
                await channel.close()

        return asyncio.run(go())

    def status(self, manager: str) -> dict[str, Any] | None:
        try:
            return self.call(manager, "ClusterStatus", {})
        except Exception:
            return None

    def leader(self, among: list[str] | None = None) -> str | None:
        """The manager that says it leads (asked of each live one)."""
        for name in among or list(self.managers):
            daemon = self.managers[name]
            if daemon.proc is None or daemon.proc.poll() is not None:
                continue
            status = self.status(name)
            if status and status.get("leader") == self.address(name):
                return name
        return None

    def cli(
        self, manager: str, *args: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shoal_cmd(*args, "--server", self.address(manager)),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "SHOAL_STATE_DIR": str(self.root / next(iter(self.managers)))},
        )

    def apply(self, manager: str, name: str, replicas: int, tag: str = "") -> bool:
        path = self.root / f"{name}{tag}.yaml"
        path.write_text(service_yaml(name, ["sleep", "600"], replicas, run=str(self.root)))
        return self.cli(manager, "apply", "-f", str(path)).returncode == 0

    def tasks(self, manager: str, service: str | None = None) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"kind": "tasks"}
        if service:
            request["service"] = service
        return list(self.call(manager, "Get", request)["items"])

    def running(self, manager: str, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(manager, service)
            if t["status"]["state"] == "running" and t["desiredState"] == "running"
        ]

    def log_events(self, manager: str) -> list[dict[str, Any]]:
        events = []
        for line in self.managers[manager].log().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def slots_running(self) -> dict[tuple[str, str], set[str]]:
        """(service, slot) → ids of tasks with a live process, from /proc."""
        slots: dict[tuple[str, str], set[str]] = {}
        for env in processes_with_env("E2E_RUN", str(self.root)).values():
            key = (env.get("SHOAL_SERVICE", "?"), env.get("SHOAL_TASK_SLOT", "?"))
            slots.setdefault(key, set()).add(env.get("SHOAL_TASK_ID", "?"))
        return slots

    def stop_all(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for manager in self.managers.values():
            if manager.proc is not None and manager.proc.poll() is None:
                manager.signal(signal.SIGCONT)
            manager.stop()


@contextlib.contextmanager
def ha_cluster(root: Path, managers: int = 3, agents: int = 2) -> Iterator[HACluster]:
    with etcd_cluster(root / "etcd") as etcd:
        cluster = HACluster(root, etcd)
        try:
            names = [f"m{i}" for i in range(1, managers + 1)]
            cluster.start_manager(names[0])
            wait_for(lambda: cluster.leader() == names[0], 20, "the first manager to lead")
            for name in names[1:]:
                cluster.start_manager(name)
            result = cluster.cli(names[0], "token", "worker")
            assert result.returncode == 0, result.stderr
            cluster.token = result.stdout.strip()
            for index in range(agents):
                # Each agent is told about one manager only: n1 the first leader (it must
                # fail over to managers it learned of), n2 a follower (it is redirected).
                cluster.start_agent(f"n{index + 1}", names[index % managers])
            wait_for(
                lambda: (
                    len(
                        [
                            n
                            for n in cluster.call(names[0], "Get", {"kind": "nodes"})["items"]
                            if n["status"]["state"] == "ready"
                        ]
                    )
                    == agents
                ),
                30,
                "agents to join",
            )
            yield cluster
        finally:
            cluster.stop_all()
            for pid in processes_with_env("E2E_RUN", str(root)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            release_task_files({name: root / "agents" / name for name in cluster.agents})
