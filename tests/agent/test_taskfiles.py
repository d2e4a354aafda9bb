"""A task's secrets and configs on the node: a tmpfs per task, modes and owners, clean-up."""

from __future__ import annotations

import os
import pwd
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.taskfiles import TaskFileStore
from shoal.errors import TaskRejectedError
from shoal.models import Task, TaskTemplate

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs mounts and chown need root")
NOBODY = pwd.getpwnam("nobody")


def task(task_id: str, **template: Any) -> Task:
    return Task(
        id=task_id,
        service="web",
        slot=1,
        template=TaskTemplate.model_validate({"command": ["true"], **template}),
        created_at=datetime.now(UTC),
    )


def mounted(path: Path) -> bool:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) and " - tmpfs " in line for line in lines)


async def test_process_task_files_belong_to_its_user_on_a_tmpfs(tmp_path: Path) -> None:
    store = TaskFileStore(tmp_path / "run")
    one = task(
        "t1",
        secrets=[{"source": "db", "target": "pass", "mode": "0400"}, {"source": "tls", "uid": 0}],
        configs=[{"source": "app", "target": "/etc/app/app.conf"}],
    )
    data = {("secret", "db"): b"hunter2", ("secret", "tls"): b"key", ("config", "app"): b"x=1\n"}
    files = await store.prepare(one, data, (NOBODY.pw_uid, NOBODY.pw_gid))
    assert files is not None and files.secrets_dir is not None and files.configs_dir is not None
    try:
        assert mounted(files.root)
        assert files.env() == {
            "SHOAL_SECRETS_DIR": str(files.root / "secrets"),
            "SHOAL_CONFIGS_DIR": str(files.root / "configs"),
        }
        secret = (files.secrets_dir / "pass").stat()
        assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o400, NOBODY.pw_uid)
        assert (files.secrets_dir / "pass").read_bytes() == b"hunter2"
        assert (files.secrets_dir / "tls").stat().st_uid == 0  # the reference's uid wins
        for directory in (files.root, files.secrets_dir):
            info = directory.stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, NOBODY.pw_uid)
        assert (files.configs_dir / "etc" / "app" / "app.conf").read_bytes() == b"x=1\n"
        assert ("/run/secrets", files.secrets_dir) in files.mounts
        assert store.leftovers() == ["t1"]
    finally:
        await store.release("t1")
    assert not files.root.exists() and not mounted(files.root)
    assert store.leftovers() == []


async def test_container_task_files_are_roots_and_reachable_inside(tmp_path: Path) -> None:
    store = TaskFileStore(tmp_path / "run")
    one = task(
        "t2",
        runtime="docker",
        image="busybox",
        command=[],
        secrets=[{"source": "db"}],
        configs=[{"source": "app", "target": "/etc/app.conf"}],
    )
    data = {("secret", "db"): b"hunter2", ("config", "app"): b"x=1\n"}
    files = await store.prepare(one, data, (0, 0))
    assert files is not None and files.secrets_dir is not None and files.configs_dir is not None
    try:
        assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
        assert stat.S_IMODE(files.secrets_dir.stat().st_mode) == 0o755
        secret = (files.secrets_dir / "db").stat()
        assert (stat.S_IMODE(secret.st_mode), secret.st_uid) == (0o444, 0)
        assert dict(files.mounts) == {
            "/run/secrets": files.secrets_dir,
            "/etc/app.conf": files.configs_dir / "etc" / "app.conf",
        }
    finally:
        await store.release("t2")


async def test_missing_bytes_reject_the_task_naming_them(tmp_path: Path) -> None:
    store = TaskFileStore(tmp_path / "run")
    one = task("t3", secrets=[{"source": "db"}], configs=[{"source": "app"}])
    with pytest.raises(TaskRejectedError, match="secret 'db', config 'app' did not reach"):
        await store.prepare(one, {}, (0, 0))
    assert store.leftovers() == []
    assert await store.prepare(task("t4"), {}, (0, 0)) is None  # nothing to write
