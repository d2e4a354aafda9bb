"""A real shoal cluster for end-to-end tests: manager and agents as subprocesses.

Everything here is the product as users run it: ``python -m shoal manager``,
``python -m shoal agent`` and ``python -m shoal <verb>`` processes talking gRPC
on loopback, real task processes found in ``/proc``. Only the polling uses the
Python client directly, so waiting costs milliseconds instead of a CLI start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.agent.taskfiles import default_runtime_dir
from shoal.api.transport import CONTROL_SERVICE, Client, open_channel
from shoal.security.contexts import Context, load_bundle

HEARTBEAT = 0.5  # seconds; a node is down after 3 missed heartbeats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shoal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", *args]


def processes_with_env(key: str, value: str) -> dict[int, dict[str, str]]:
    """Live processes whose environment has ``key=value``: pid → environment."""
    found: dict[int, dict[str, str]] = {}
    needle = f"{key}={value}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle not in raw.split(b"\0"):
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie is not running
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        found[int(entry.name)] = env
    return found


def release_task_files(agents: dict[str, Path]) -> None:
    """Unmount and remove what killed agents left of their tasks' secret files (a tmpfs
    per task under each agent's runtime dir, which a live agent would have released)."""
    runtime_dirs = [default_runtime_dir(name, state_dir) for name, state_dir in agents.items()]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    for point in sorted(points, reverse=True):
        if any(Path(point).is_relative_to(d) for d in runtime_dirs):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
    for runtime_dir in runtime_dirs:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def task_processes(service: str) -> dict[int, dict[str, str]]:
    return processes_with_env("SHOAL_SERVICE", service)


def tasks_in_process_table(service: str) -> set[str]:
    """Ids of the tasks of ``service`` that have at least one live process."""
    return {env["SHOAL_TASK_ID"] for env in task_processes(service).values()}


@dataclass
class Daemon:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "SHOAL_LOG_FORMAT": "json"}
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    """One manager on SQLite and any number of agents, each a real process."""

    root: Path
    port: int = field(default_factory=free_port)
    join_port: int = field(default_factory=free_port)
    manager: Daemon | None = None
    agents: dict[str, Daemon] = field(default_factory=dict)
    state_dirs: dict[str, Path] = field(default_factory=dict)  # each agent's, by name
    token: str = ""
    manager_args: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.join_port}"

    @property
    def credentials(self) -> Context:
        """The admin bundle the manager wrote into its state dir (what the CLI uses)."""
        return load_bundle(self.root / "manager" / "admin.yaml")

    def start_manager(self, extra_args: Sequence[str] = ()) -> None:
        self.manager = Daemon(
            "manager",
            shoal_cmd(
                "manager",
                "--store",
                f"sqlite:///{self.root / 'manager' / 'state.db'}",
                "--state-dir",
                str(self.root / "manager"),
                "--listen",
                self.address,
                "--join-listen",
                self.join_address,
                "--heartbeat-period",
                f"{int(HEARTBEAT * 1000)}ms",
                *self.manager_args,
                *extra_args,
            ),
            self.root / "manager.log",
        )
        self.manager.start()
        wait_for(
            lambda: (
                (self.root / "manager" / "admin.yaml").exists()
                and self.try_call("Version", {}) is not None
            ),
            20,
            "manager to listen",
        )
        if not self.token:
            self.token = self.cli("token", "worker").stdout.strip()

    def agent_args(self, name: str, state_dir: Path, *extra: str) -> list[str]:
        """The command line of an agent called ``name`` joining this cluster."""
        return shoal_cmd(
            "agent",
            "--manager",
            self.address,
            "--join",
            self.join_address,
            "--token",
            self.token,
            "--name",
            name,
            "--state-dir",
            str(state_dir),
            *extra,
        )

    def start_agent(self, name: str, *labels: str, extra_args: Sequence[str] = ()) -> Daemon:
        args = self.agent_args(name, self.root / "agents" / name)
        for label in labels:
            args += ["--label", label]
        args += extra_args
        self.state_dirs[name] = self.root / "agents" / name
        agent = self.agents.get(name) or Daemon(name, args, self.root / f"agent-{name}.log")
        agent.args = args
        self.agents[name] = agent
        agent.start()
        wait_for(lambda: self.node_state(name) == "ready", 20, f"node {name} ready")
        return agent

    def start_fleet(self, name: str, count: int) -> Daemon:
        """One agent process simulating ``count`` nodes (``NAME-0`` …, zero-padded), all ready."""
        self.state_dirs[name] = self.root / name
        fleet = Daemon(
            name,
            self.agent_args(name, self.root / name, "--sim-nodes", str(count)),
            self.root / f"fleet-{name}.log",
        )
        self.agents[name] = fleet
        fleet.start()

        def ready() -> int:
            nodes = (self.try_call("Get", {"kind": "nodes"}) or {}).get("items", [])
            return sum(
                1
                for n in nodes
                if str(n["id"]).startswith(f"{name}-") and n["status"]["state"] == "ready"
            )

        wait_for(lambda: ready() == count, 30, f"{count} {name} nodes ready")
        return fleet

    def stop_all(self) -> None:
        for service in [
            s["metadata"]["name"]
            for s in (self.try_call("Get", {"kind": "services"}) or {}).get("items", [])
        ]:
            self.cli("delete", "service", service, "--no-wait", check=False)
        for agent in self.agents.values():
            agent.stop()
        if self.manager:
            self.manager.stop()

    # ------------------------------------------------------------- clients

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            shoal_cmd(*args, "--server", self.address)
            if args[0] not in ("version",)
            else shoal_cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.cli_env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"shoal {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def cli_env(self) -> dict[str, str]:
        """The CLI finds the manager's admin bundle the way it finds a local `shoal up`'s."""
        return {**os.environ, "SHOAL_STATE_DIR": str(self.root / "manager")}

    def call(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            channel = open_channel(self.address, self.credentials)
            try:
                return await Client(channel, CONTROL_SERVICE).call(method, request, timeout=10)
            finally:
                await channel.close()

        return asyncio.run(go())

    def try_call(self, method: str, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.call(method, request)
        except Exception:
            return None

    def tasks(self, service: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"kind": "tasks", "all": all}
        if service:
            request["service"] = service
        return list(self.call("Get", request)["items"])

    def running(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["status"]["state"] == "running" and t["desiredState"] == "running"
        ]

    def node_state(self, name: str) -> str | None:
        reply = self.try_call("Get", {"kind": "nodes"})
        for node in (reply or {}).get("items", []):
            if node["id"] == name:
                return str(node["status"]["state"])
        return None

    def wait_running(self, service: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.running(service)) == count and len(self.tasks(service)) == count,
            timeout,
            f"{count} running tasks of {service}",
        )
        return self.running(service)

    def service(self, name: str, command: list[str], replicas: int | None = 1, **spec: Any) -> str:
        return service_yaml(name, command, replicas, run=str(self.root), **spec)

    def apply(self, text: str, name: str = "spec.yaml") -> subprocess.CompletedProcess[str]:
        path = self.root / name
        path.write_text(text)
        return self.cli("apply", "-f", str(path))


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll until ``condition()`` is truthy; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def service_yaml(
    name: str, command: list[str], replicas: int | None = 1, run: str = "", **spec: Any
) -> str:
    """A Service document; ``run`` marks its processes for clean-up after the test."""
    doc: dict[str, Any] = {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"command": command, "env": {"E2E_RUN": run}}},
    }
    if replicas is not None:
        doc["spec"]["replicas"] = replicas
    for key, value in spec.items():
        if key == "template":
            doc["spec"]["template"].update(value)
        else:
            doc["spec"][key] = value
    return json.dumps(doc)


@contextlib.contextmanager
def cluster_at(root: Path, manager_args: Sequence[str] = ()) -> Iterator[Cluster]:
    cluster = Cluster(root, manager_args=tuple(manager_args))
    # CLI processes a test starts itself find the admin bundle through this.
    previous = os.environ.get("SHOAL_STATE_DIR")
    os.environ["SHOAL_STATE_DIR"] = str(root / "manager")
    try:
        cluster.start_manager()
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SHOAL_STATE_DIR", None)
        else:
            os.environ["SHOAL_STATE_DIR"] = previous
        cluster.stop_all()
        # Tasks outlive agents by design; a test must not leak them to the next one.
        for pid in processes_with_env("E2E_RUN", str(root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        release_task_files(cluster.state_dirs)
