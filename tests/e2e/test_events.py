"""Events end to end: kept in the store, served by every manager, streamed as they happen.

Real processes throughout: a task's process is killed by hand (its pid from the
task, checked in /proc), and what ``shoal events`` prints is compared with what
happened; on etcd the leader is SIGKILLed and the new leader must serve the old
history.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import cluster_at, shoal_cmd, wait_for
from tests.e2e.hacluster import ha_cluster

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _events(cli: Any, *args: str) -> list[dict[str, Any]]:
    result = cli("events", "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["items"])


def test_events_survive_a_leader_failover_on_etcd(tmp_path: Path) -> None:
    with ha_cluster(tmp_path, managers=3, agents=2) as ha:
        leader = ha.leader()
        assert leader is not None
        assert ha.apply(leader, "web", 2)
        wait_for(lambda: len(ha.running(leader, "web")) == 2, 30, "2 running tasks of web")
        victim = ha.running(leader, "web")[0]
        pid = int(victim["status"]["pid"])
        assert _alive(pid)
        os.kill(pid, signal.SIGKILL)
        name = f"task/web.{victim['slot']}.{victim['id'][:8]}"

        def failed_seen(manager: str) -> bool:
            events = _events(lambda *a: ha.cli(manager, *a), "--service", "web")
            return any(e["object"] == name and e["reason"] == "TaskFailed" for e in events)

        followers = [m for m in ha.managers if m != leader]
        # A follower serves the history too: it follows the store, not the leader.
        wait_for(lambda: failed_seen(followers[0]), 30, "the follower to show the TaskFailed")
        before = {e["id"]: e for e in _events(lambda *a: ha.cli(leader, *a)) if e["cursor"]}
        assert any(e["reason"] == "NodeReady" for e in before.values())

        ha.managers[leader].kill()
        wait_for(lambda: ha.leader(followers) is not None, 30, "a new leader")
        new_leader = ha.leader(followers)
        assert new_leader is not None
        after = {e["id"]: e for e in _events(lambda *a: ha.cli(new_leader, *a))}
        missing = set(before) - set(after)
        assert not missing, f"the new leader lost {len(missing)} events"
        failed = [e for e in after.values() if e["object"] == name and e["reason"] == "TaskFailed"]
        assert len(failed) == 1
        assert failed[0]["type"] == "Warning"
        assert "killed by SIGKILL" in failed[0]["message"]

        # The new leader records too, and every manager serves what it records.
        assert ha.cli(new_leader, "scale", "web=3").returncode == 0
        other = next(m for m in followers if m != new_leader)
        wait_for(
            lambda: any(
                e["reason"] == "Scaled"
                for e in _events(lambda *a: ha.cli(other, *a), "--object", "service/web")
            ),
            30,
            "the Scaled event on the other manager",
        )


@contextlib.contextmanager
def _watch(args: list[str]) -> Iterator[queue.Queue[dict[str, Any]]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)


def test_watch_shows_a_killed_task_fail_and_its_replacement_run(tmp_path: Path) -> None:
    with cluster_at(tmp_path) as cluster:
        cluster.start_agent("n1")
        argv = shoal_cmd("events", "-w", "--service", "web", "-o", "json")
        with _watch([*argv, "--server", cluster.address]) as lines:
            cluster.apply(cluster.service("web", ["sleep", "600"], 1))
            (task,) = cluster.wait_running("web", 1)
            pid = int(task["status"]["pid"])
            assert _alive(pid)
            seen: list[dict[str, Any]] = []

            def until(found: Any, what: str) -> dict[str, Any]:
                def look() -> bool:
                    with contextlib.suppress(queue.Empty):
                        while True:
                            seen.append(lines.get_nowait())
                    return any(found(e) for e in seen)

                wait_for(look, 30, what)
                return next(e for e in seen if found(e))

            name = f"task/web.1.{task['id'][:8]}"
            running = until(
                lambda e: e["object"] == name and e["reason"] == "TaskRunning",
                "the watch to show the task running",
            )
            assert f"(pid {pid})" in running["message"]

            os.kill(pid, signal.SIGKILL)  # by hand, as an operator would
            failed = until(
                lambda e: e["object"] == name and e["reason"] == "TaskFailed",
                "the watch to show the task failed",
            )
            assert failed["type"] == "Warning"
            assert "killed by SIGKILL" in failed["message"]
            replacement = until(
                lambda e: (
                    e["object"].startswith("task/web.1.")
                    and e["object"] != name
                    and e["reason"] == "TaskRunning"
                ),
                "the watch to show a new task running in the slot",
            )
            assert seen.index(failed) < seen.index(replacement)
            new_pid = int(replacement["message"].rsplit("(pid ", 1)[1].rstrip(")"))
            assert new_pid != pid and _alive(new_pid)
            assert not _alive(pid)
            # Nothing the watch printed came twice.
            printed = [(e["id"], e["cursor"]) for e in seen]
            assert len(printed) == len(set(printed))
