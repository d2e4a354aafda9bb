"""A task's secrets and configs on the node: one small tmpfs per task, gone when it ends.

The manager sends a secret's bytes with the assignment of a task that uses it
(``shoal.manager.secretstore``); the agent keeps them in memory only and, just
before the task starts, writes them here::

    <runtime dir>/tasks/<task id>/          a tmpfs of its own (nodev, nosuid, noexec)
        secrets/<target>                    mode, uid, gid from the reference
        configs/<path>

Never under the agent's state dir, which is on disk: the runtime dir is
``/run/shoal/<node>-<id>`` for root, else ``$XDG_RUNTIME_DIR/shoal/...`` (itself
a tmpfs on systemd machines). Where the agent cannot mount (not root, no
``CAP_SYS_ADMIN``) the task directory is a plain 0700 directory there instead,
and the agent says so once in its log.

Processes find the directories in ``$SHOAL_SECRETS_DIR`` and
``$SHOAL_CONFIGS_DIR``; container runtimes bind-mount ``secrets/`` read-only at
``/run/secrets`` and each config file read-only at its target. ``release``
unmounts and removes the directory when the task has ended (and, after an
agent restart, for every task directory no runtime still runs).

Ownership: a file belongs to the reference's ``uid``/``gid``; by default to the
user a process task runs as, and to root (0) in a container, as in Swarm. The
task directory is 0700: a process task's user owns it; for a container it is
root's (the engine binds from it as root), and inside the container
``/run/secrets`` is 0755 so the container's own user reaches the files their
modes allow it. Mount points are visible to every local user; the directories
behind them are not.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from shoal.errors import TaskRejectedError
from shoal.models import Task
from shoal.models.secret import SECRETS_MOUNT

log = structlog.get_logger(__name__)

_SLACK = 64 * 1024  # tmpfs room beyond the files themselves (inodes, directories)


@dataclass(frozen=True, slots=True)
class TaskFiles:
    """Where one task's files are on the node, and where containers want them."""

    root: Path
    secrets_dir: Path | None
    configs_dir: Path | None
    # (path in the container, file or directory on the node), read-only binds
    mounts: tuple[tuple[str, Path], ...]

    def env(self) -> dict[str, str]:
        """The variables a process task finds its files through."""
        env = {}
        if self.secrets_dir is not None:
            env["SHOAL_SECRETS_DIR"] = str(self.secrets_dir)
        if self.configs_dir is not None:
            env["SHOAL_CONFIGS_DIR"] = str(self.configs_dir)
        return env


def default_runtime_dir(node: str, state_dir: Path) -> Path:
    """``/run/shoal/<node>-<id>`` (root) or ``$XDG_RUNTIME_DIR/shoal/<node>-<id>``.

    ``<id>`` comes from the agent's state dir: two agents on one machine (tests,
    simulated fleets) never share, or clean up, each other's task files.
    """
    name = f"{node}-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]}"
    if os.geteuid() == 0:
        return Path("/run/shoal") / name
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "shoal" / name
    return Path(tempfile.gettempdir()) / f"shoal-{os.geteuid()}" / name


class TaskFileStore:
    """Writes and removes the per-task directories described in the module docstring."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.tasks_dir = runtime_dir / "tasks"
        self._mount_refused = False

    def _task_dir(self, task_id: str) -> Path:
        if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
            raise TaskRejectedError(f"invalid task id {task_id!r}")
        return self.tasks_dir / task_id

    async def prepare(
        self, task: Task, data: dict[tuple[str, str], bytes], owner: tuple[int, int]
    ) -> TaskFiles | None:
        """Write ``task``'s files; ``owner`` is the default uid and gid of its files."""
        template = task.template
        if not template.secrets and not template.configs:
            return None
        missing = [
            f"{kind} {ref.source!r}"
            for kind, refs in (("secret", template.secrets), ("config", template.configs))
            for ref in refs
            if (kind, ref.source) not in data
        ]
        if missing:
            raise TaskRejectedError(
                f"{', '.join(missing)} did not reach this node (removed since the task "
                "was created?)"
            )
        return await asyncio.to_thread(self._write, task, data, owner)

    def _write(
        self, task: Task, data: dict[tuple[str, str], bytes], owner: tuple[int, int]
    ) -> TaskFiles:
        template = task.template
        root = self._task_dir(task.id)
        if root.exists():
            self._release(task.id)
        for parent in (self.runtime_dir, self.tasks_dir):
            parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, 0o711)  # task users may pass through, not list
        root.mkdir(mode=0o700)
        size = sum(len(blob) for blob in data.values()) + _SLACK
        self._mount(root, size)
        container = template.is_container
        uid, gid = owner
        mounts: list[tuple[str, Path]] = []
        secrets_dir = configs_dir = None
        # Only the task's user (a process) or nobody but root (a container: the engine
        # binds from here as root) may enter: mount points are listed for everyone.
        if os.geteuid() == 0 and not container:
            os.chown(root, uid, gid)
        os.chmod(root, 0o700)
        if template.secrets:
            secrets_dir = root / "secrets"
            secrets_dir.mkdir(mode=0o700)
            for ref in template.secrets:
                _write_file(
                    secrets_dir / ref.file_name,
                    data[("secret", ref.source)],
                    ref.mode,
                    uid if ref.uid is None else ref.uid,
                    gid if ref.gid is None else ref.gid,
                )
            if os.geteuid() == 0:
                os.chown(secrets_dir, uid, gid)
            os.chmod(secrets_dir, 0o755 if container else 0o700)
            mounts.append((SECRETS_MOUNT, secrets_dir))
        if template.configs:
            configs_dir = root / "configs"
            configs_dir.mkdir(mode=0o755)
            for config_ref in template.configs:
                path = configs_dir / config_ref.relative_path
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                _write_file(
                    path,
                    data[("config", config_ref.source)],
                    config_ref.mode,
                    uid if config_ref.uid is None else config_ref.uid,
                    gid if config_ref.gid is None else config_ref.gid,
                )
                mounts.append((config_ref.container_path, path))
            if os.geteuid() == 0:
                os.chown(configs_dir, uid, gid)
        return TaskFiles(root, secrets_dir, configs_dir, tuple(mounts))

    def _mount(self, root: Path, size: int) -> None:
        if self._mount_refused:
            return
        options = f"size={size},mode=0700,nodev,nosuid,noexec"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "shoal-task-files", str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            self._mount_refused = True
            log.warning(
                "taskfiles.no_tmpfs",
                reason=result.stderr.strip() or f"mount exited {result.returncode}",
                fallback=f"0700 directories under {self.tasks_dir}",
            )

    async def release(self, task_id: str) -> None:
        """Unmount and remove the task's directory, if it has one."""
        await asyncio.to_thread(self._release, task_id)

    def _release(self, task_id: str) -> None:
        root = self._task_dir(task_id)
        if not root.exists():
            return
        if os.path.ismount(root):
            # Lazy: a process still holding a file there cannot keep the directory mounted.
            subprocess.run(["umount", "--lazy", str(root)], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        log.info("taskfiles.released", task=task_id)

    def leftovers(self) -> list[str]:
        """Task ids that have a directory here (for clean-up after an agent restart)."""
        if not self.tasks_dir.is_dir():
            return []
        return sorted(p.name for p in self.tasks_dir.iterdir())


def _write_file(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        _chown(f.fileno(), uid, gid, path)
        os.fchmod(f.fileno(), mode)


def _chown(fd: int, uid: int, gid: int, path: Path) -> None:
    if os.geteuid() != 0:
        if (uid, gid) != (os.geteuid(), os.getegid()):
            raise TaskRejectedError(
                f"cannot give {path.name} to uid {uid} gid {gid}: the agent does not run as root"
            )
        return
    os.fchown(fd, uid, gid)
