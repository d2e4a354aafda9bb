"""Stopping ``shoal up`` says what keeps running; ``shoal down`` stops it.

A real ``shoal up`` with a process service: after SIGTERM its tasks' processes
are still in ``/proc`` and ``up`` says so, naming ``shoal down``; ``shoal down``
then stops them (gone from ``/proc``), unmounts and removes their secret files
and drops their port records, and a second run finds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import (
    free_port,
    service_yaml,
    shoal_cmd,
    task_processes,
    tasks_in_process_table,
    wait_for,
)

pytestmark = pytest.mark.slow


def mount_points() -> set[Path]:
    """Every mount point on this machine, from /proc/mounts (octal escapes undone)."""
    lines = Path("/proc/mounts").read_text().splitlines()
    return {
        Path(line.split()[1].encode().decode("unicode_escape")) for line in lines if line.strip()
    }


def test_up_stopping_names_what_keeps_running_and_down_stops_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "SHOAL_STATE_DIR": str(state)}
    env.pop("SHOAL_SERVER", None)
    address = f"127.0.0.1:{free_port()}"
    up_log = tmp_path / "up.log"
    with up_log.open("wb") as log:
        up = subprocess.Popen(
            shoal_cmd(
                "up", "--state-dir", str(state), "--listen", address, "--name", "updown",
                "--join-listen", f"127.0.0.1:{free_port()}", "--http-listen", "off",
            ),
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shoal_cmd(*args), capture_output=True, text=True, timeout=60, env=env, check=False
        )

    try:
        wait_for(lambda: cli("get", "nodes").returncode == 0, 30, "shoal up to answer")
        (tmp_path / "pass").write_text("s3cret")
        assert cli("secret", "create", "ud-pass", "-f", str(tmp_path / "pass")).returncode == 0
        spec = tmp_path / "ud.yaml"
        template = {"secrets": [{"source": "ud-pass"}], "ports": [{"name": "http"}]}
        spec.write_text(
            service_yaml("ud-sleep", ["sleep", "300"], 2, str(tmp_path), template=template)
        )
        assert cli("apply", "-f", str(spec)).returncode == 0
        wait_for(lambda: len(tasks_in_process_table("ud-sleep")) == 2, 30, "two task processes")
        # Each task's secret files (a tmpfs of its own, as root) and its port record.
        task_dirs = {
            Path(env["SHOAL_SECRETS_DIR"]).parent for env in task_processes("ud-sleep").values()
        }
        assert len(task_dirs) == 2 and all((d / "secrets" / "ud-pass").exists() for d in task_dirs)
        if os.geteuid() == 0:
            assert task_dirs <= mount_points()
        port_records = state / "agent" / "ports"
        assert len(list(port_records.glob("*.json"))) == 2

        refused = cli("down", "--state-dir", str(state), "--name", "updown")
        assert refused.returncode == 1
        assert "shoal up is running" in refused.stderr and "stop it first" in refused.stderr

        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        said = up_log.read_text()
        assert "shoal up stopped; 2 tasks keep running on this machine (process: 2)" in said
        assert f"shoal down --state-dir {state.resolve()}" in said
        assert len(tasks_in_process_table("ud-sleep")) == 2

        down = cli("down", "--state-dir", str(state), "--name", "updown", "--grace", "5s")
        assert down.returncode == 0, down.stderr
        assert down.stdout.splitlines()[-1] == "stopped 2 tasks (process: 2)"
        assert task_processes("ud-sleep") == {}
        # Nothing of the tasks is left behind: no tmpfs, no secret file, no port record.
        assert not task_dirs & mount_points()
        assert not any(d.exists() for d in task_dirs)
        assert list(port_records.glob("*.json")) == []
        again = cli("down", "--state-dir", str(state), "--name", "updown")
        assert again.returncode == 0 and again.stderr == "nothing was running\n"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        for pid in task_processes("ud-sleep"):
            os.kill(pid, signal.SIGKILL)
