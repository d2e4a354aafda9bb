"""A real etcd cluster for tests: members are ``etcd`` processes on loopback ports.

Debian's ``etcd-server`` provides the binary. Without it the tests that need
etcd are skipped with the reason, or fail when ``SHOAL_REQUIRE_ENGINES=1``
(CI sets it: a missing engine must never pass as a skip).

Members run with a 50 ms heartbeat and a 500 ms election timeout so a lost
leader is replaced in about a second. Each member can be killed (SIGKILL),
stopped and started again on the same data directory, so quorum can be lost and
regained exactly as on real machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")


def require_etcd() -> str:
    """The etcd binary; skip (or fail under ``SHOAL_REQUIRE_ENGINES=1``) without it."""
    if ETCD is None or ETCDCTL is None:
        reason = "etcd is not installed (apt-get install etcd-server etcd-client)"
        if os.environ.get("SHOAL_REQUIRE_ENGINES") == "1":
            pytest.fail(f"{reason}, and SHOAL_REQUIRE_ENGINES=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return ETCD


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class EtcdCluster:
    """``size`` members on loopback; ``url(prefix)`` is the shoal store URL."""

    root: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)
    # Serve clients over TLS and require client certificates (``--client-cert-auth``).
    tls: bool = False

    def __post_init__(self) -> None:
        binary = require_etcd()
        scheme = "https" if self.tls else "http"
        if self.tls:
            self._make_certificates()
        ports = _free_ports(2 * self.size)
        token = f"shoal-test-{os.getpid()}-{time.monotonic_ns()}"
        names = [f"m{i}" for i in range(self.size)]
        initial = ",".join(
            f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        for i, name in enumerate(names):
            client, peer = ports[2 * i], ports[2 * i + 1]
            member = Member(name, client, peer, self.root / name, self.root / f"{name}.log")
            member.args = [
                binary,
                "--name",
                name,
                "--data-dir",
                str(member.data_dir),
                "--listen-client-urls",
                f"{scheme}://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"{scheme}://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
                "--logger",
                "zap",
            ]
            if self.tls:
                pki = self.root / "pki"
                member.args += [
                    "--client-cert-auth",
                    "--trusted-ca-file",
                    str(pki / "ca.pem"),
                    "--cert-file",
                    str(pki / "server.pem"),
                    "--key-file",
                    str(pki / "server.key"),
                ]
            self.members.append(member)

    def _make_certificates(self) -> None:
        """A CA of the test's own, a server certificate for 127.0.0.1 and a client one."""
        from tests.etcdpki import write_etcd_pki

        write_etcd_pki(self.root / "pki")

    @property
    def client_tls_query(self) -> str:
        pki = self.root / "pki"
        return f"?ca={pki / 'ca.pem'}&cert={pki / 'client.pem'}&key={pki / 'client.key'}"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "shoal") -> str:
        query = self.client_tls_query if self.tls else ""
        return f"etcd://{','.join(self.endpoints)}/{prefix}{query}"

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            member.start()
        self.wait_healthy(timeout)

    def etcdctl(self, *args: str, endpoints: list[str] | None = None) -> str:
        assert ETCDCTL is not None, "etcdctl is missing (apt-get install etcd-client)"
        tls: list[str] = []
        if self.tls:
            pki = self.root / "pki"
            tls = [
                f"--cacert={pki / 'ca.pem'}",
                f"--cert={pki / 'client.pem'}",
                f"--key={pki / 'client.key'}",
            ]
        result = subprocess.run(
            [ETCDCTL, *tls, "--endpoints", ",".join(endpoints or self.endpoints), *args],
            capture_output=True,
            text=True,
            timeout=15,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def leader(self) -> Member | None:
        """The member that currently leads the Raft group (asked of the live members)."""
        live = [m for m in self.members if m.running]
        if not live:
            return None
        try:
            out = self.etcdctl(
                "endpoint", "status", "-w", "json", endpoints=[m.endpoint for m in live]
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            return None
        statuses = json.loads(out)
        for entry in statuses:
            status = entry["Status"]
            if status["leader"] == status["header"]["member_id"]:
                return next((m for m in live if m.endpoint == entry["Endpoint"]), None)
        return None

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running member answers and a leader exists."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                self.etcdctl(
                    "endpoint",
                    "health",
                    endpoints=[m.endpoint for m in self.members if m.running],
                )
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            time.sleep(0.1)
        logs = "\n".join(m.log_path.read_text(errors="replace")[-1500:] for m in self.members)
        raise AssertionError(f"etcd did not become healthy in {timeout}s: {last}\n{logs}")

    def close(self) -> None:
        for member in self.members:
            member.kill()


@contextlib.contextmanager
def etcd_cluster(root: Path, size: int = 3, tls: bool = False) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(root, size, tls=tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
