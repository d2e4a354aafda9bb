"""Backup and restore end to end: a running cluster backed up, its store wiped, restored.

Real processes: a manager on SQLite, an agent with the process runtime, tasks
that read a secret. After the restore the services and the secret are back,
the tasks still running are adopted (the same processes, by pid, from /proc),
and a new task reads the secret's bytes, which never appear in the backup.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import cluster_at, processes_with_env, shoal_cmd, wait_for

pytestmark = pytest.mark.slow

SECRET = b"s3cret-for-the-backup-test\n"


def _pids_by_task(root: Path) -> dict[str, set[int]]:
    """Task id -> the pids of its processes (the runtime's wrapper, the command), from /proc."""
    pids: dict[str, set[int]] = {}
    for pid, env in processes_with_env("E2E_RUN", str(root)).items():
        if "SHOAL_TASK_ID" in env and env.get("SHOAL_SERVICE") == "web":
            pids.setdefault(env["SHOAL_TASK_ID"], set()).add(pid)
    return pids


def _restore(backup: Path, state: Path, key: Path) -> subprocess.CompletedProcess[str]:
    """``shoal store restore``: offline, it talks to the store, not to a manager."""
    args = ["store", "restore", "-i", str(backup), "--state-dir", str(state)]
    return subprocess.run(
        shoal_cmd(*args, "--data-key-file", str(key)), capture_output=True, text=True, timeout=60
    )


def test_backup_wipe_restore_brings_services_secrets_and_tasks_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with cluster_at(tmp_path) as cluster:
        cluster.start_agent("n1")
        secret_file = tmp_path / "db-pass"
        secret_file.write_bytes(SECRET)
        cluster.cli("secret", "create", "db-pass", "-f", str(secret_file))
        script = f'cat "$SHOAL_SECRETS_DIR/db-pass" > {out}/$SHOAL_TASK_ID; exec sleep 600'
        cluster.apply(
            cluster.service(
                "web", ["/bin/sh", "-c", script], 2, template={"secrets": [{"source": "db-pass"}]}
            )
        )
        running = cluster.wait_running("web", 2)
        before = {t["id"]: int(t["status"]["pid"]) for t in running}
        processes = _pids_by_task(tmp_path)
        assert set(processes) == set(before)
        assert all(before[task] in pids for task, pids in processes.items())
        for task_id in before:
            wait_for(lambda t=task_id: (out / t).exists(), 10, "the task to read its secret")
            assert (out / task_id).read_bytes() == SECRET

        backup = tmp_path / "cluster.backup"
        result = cluster.cli("store", "backup", "-o", str(backup))
        assert "backed up" in result.stdout
        assert backup.stat().st_mode & 0o077 == 0
        text = backup.read_bytes()
        assert SECRET.strip() not in text
        for line in text.splitlines()[1:-1]:  # nor inside any value
            assert SECRET.strip() not in base64.b64decode(json.loads(line)["value"])

        # The manager goes, and its state with it; the tasks run on under their agent.
        assert cluster.manager is not None
        cluster.manager.stop()
        state = tmp_path / "manager"
        key = tmp_path / "kept-datakey"
        shutil.copy2(state / "datakey", key)
        shutil.rmtree(state)

        wrong = tmp_path / "wrong-datakey"
        wrong.write_text("00" * 32 + "\n")
        wrong.chmod(0o600)
        refused = _restore(backup, state, wrong)
        assert refused.returncode == 1
        assert "is not the key the backup's secrets are encrypted with" in refused.stderr
        assert not state.exists()  # nothing written

        restored = _restore(backup, state, key)
        assert restored.returncode == 0, restored.stderr
        assert "restored" in restored.stderr
        assert (state / "datakey").read_bytes() == key.read_bytes()
        cluster.start_manager()
        wait_for(lambda: cluster.node_state("n1") == "ready", 30, "the agent to come back")
        assert [
            s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]
        ] == ["web"]
        wait_for(
            lambda: {t["id"] for t in cluster.running("web")} == set(before),
            30,
            "the same tasks to be running",
        )
        # Adopted, not restarted: the very same processes.
        assert _pids_by_task(tmp_path) == processes
        assert {t["id"]: t["status"]["pid"] for t in cluster.running("web")} == before
        secrets = cluster.call("GetSecrets", {})["items"]
        assert [s["metadata"]["name"] for s in secrets] == ["db-pass"]

        # A new task gets the secret's bytes: the restored store opens with the key.
        cluster.cli("scale", "web=3")
        cluster.wait_running("web", 3)
        (new,) = {t["id"] for t in cluster.running("web")} - set(before)
        wait_for(lambda: (out / new).exists(), 10, "the new task to read its secret")
        assert (out / new).read_bytes() == SECRET
        assert set(_pids_by_task(tmp_path)) == {*before, new}
