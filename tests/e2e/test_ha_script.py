"""``deploy/ha.py`` as the install docs use it: three etcd members, three managers, a failover.

The script is run as a user runs it (its own process, its own ports), then
the cluster is asked through the CLI; ``down`` must leave none of the
processes it started.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import wait_for
from tests.engines import missing

pytestmark = pytest.mark.slow

HA = Path(__file__).resolve().parents[2] / "deploy" / "ha.py"


def free_block() -> int:
    """A base port B with B .. B+35 free on loopback (ha.py's layout)."""
    for _ in range(50):
        base = random.randrange(20000, 40000, 100)
        try:
            for port in range(base, base + 36):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of ports")


def ha(directory: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HA), "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_three_managers_on_etcd_fail_over_and_down_stops_everything(tmp_path: Path) -> None:
    if shutil.which("etcd") is None:
        missing("etcd", "the etcd binary is not installed")
    lab = tmp_path / "ha"
    base = free_block()
    started = ha(lab, "--base-port", str(base), "up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        table = json.loads((lab / "processes.json").read_text())
        assert sorted(table) == sorted(
            [f"etcd-{i}" for i in (1, 2, 3)]
            + [f"manager-{i}" for i in (1, 2, 3)]
            + [f"agent-n{i}" for i in (1, 2, 3)]
        )
        env = {
            **os.environ,
            "SHOAL_STATE_DIR": str(lab / "manager-1"),
            "SHOAL_SERVER": ",".join(f"127.0.0.1:{base + 10 * i}" for i in range(3)),
        }
        shoal = str(Path(sys.executable).parent / "shoal")

        def status() -> dict[str, Any] | None:
            reply = subprocess.run(
                [shoal, "cluster", "status", "-o", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            return json.loads(reply.stdout) if reply.returncode == 0 else None

        first = status()
        assert first is not None
        assert len(first["managers"]) == 3
        leader = first["leader"]
        (leading,) = [m for m in (1, 2, 3) if leader == f"127.0.0.1:{base + 10 * (m - 1)}"]
        stopped = ha(lab, "stop", f"manager-{leading}", timeout=60)
        assert stopped.returncode == 0, stopped.stderr

        def new_leader() -> bool:
            now = status()
            return bool(now and now["leader"] not in (None, leader) and len(now["managers"]) == 2)

        wait_for(new_leader, 30, "another manager to lead", interval=0.5)
    finally:
        down = ha(lab, "down", timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
    table = json.loads((lab / "processes.json").read_text())
    assert [name for name, entry in table.items() if alive(int(entry["pid"]))] == []
