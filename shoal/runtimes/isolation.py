"""Isolating plain processes like containers: the user they run as, and cgroup limits.

User
    ``template.user`` (``USER[:GROUP]``, names or numbers; default the agent's
    ``--process-user``, else the agent's own user) is looked up on the node.
    The task runs with that uid, gid and the user's supplementary groups, and
    ``HOME``, ``USER`` and ``LOGNAME`` set from its passwd entry. Only an
    agent running as root can run tasks as someone else.

Limits
    ``resources.limits`` (memory, cpus, pids) are enforced by a cgroup per task,
    ``<hierarchy>/shoal/<node>/<task id>``, on cgroup v2 (the unified
    hierarchy, when it has the controllers) or v1 (one hierarchy per
    controller: ``memory``, ``pids``, ``cpu``). Memory: ``memory.max`` and no
    swap (v2 ``memory.swap.max = 0``; v1 ``memory.limit_in_bytes`` and
    ``memory.memsw.limit_in_bytes``), as Docker does with ``--memory``. CPUs:
    a CFS quota of ``cpus`` times 100 ms per 100 ms. Pids: ``pids.max``, which
    counts the task's processes and threads, not shoal's wrapper shell.

How a task gets into its cgroup and user before it runs anything
    The task's command is prefixed with a tiny ``/bin/sh`` joiner that writes
    ``0`` (itself) into each ``cgroup.procs`` and then ``exec``s ``setpriv``
    (util-linux) with the uid, gid and groups, which ``exec``s the command. So
    the command's first instruction already runs limited and unprivileged, no
    ``preexec_fn`` runs in a forked copy of the agent (unsafe with threads),
    and shoal's exit-status wrapper stays outside the cgroup and root, able to
    record the exit code whatever the task does.

OOM kills
    When a task with a memory limit dies by SIGKILL and its cgroup counted an
    ``oom_kill`` (v2 ``memory.events``, v1 ``memory.oom_control``), the exit is
    reported as an OOM kill, as the container runtimes report it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from shoal.errors import TaskRejectedError
from shoal.models.container import Limits

log = structlog.get_logger(__name__)

CPU_PERIOD_US = 100_000
CONTROLLERS = ("memory", "pids", "cpu")
# Enter every cgroup.procs given before "--" (writing 0 moves the writer), then exec the rest.
JOINER = (
    'for p; do [ "$p" = -- ] && break; echo 0 > "$p" || exit 125; shift; done; shift; exec "$@"'
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# ----------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True)
class TaskUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None = None
    home: str | None = None

    def env(self) -> dict[str, str]:
        env = {}
        if self.home:
            env["HOME"] = self.home
        if self.name:
            env["USER"] = env["LOGNAME"] = self.name
        return env


def resolve_user(spec: str) -> TaskUser:
    """``"nobody"``, ``"1000"``, ``"www-data:www-data"``, ``"1000:1000"`` → ids on this node."""
    user, _, group = spec.partition(":")
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise TaskRejectedError(f"user {user!r} does not exist on this node") from None
        entry = None
    uid = int(user) if entry is None else entry.pw_uid
    gid = uid if entry is None else entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise TaskRejectedError(f"group {group!r} does not exist on this node") from None
    groups: tuple[int, ...] = (gid,)
    if entry is not None and not group:
        groups = tuple(os.getgrouplist(entry.pw_name, gid))
    return TaskUser(
        uid,
        gid,
        groups,
        name=entry.pw_name if entry else None,
        home=entry.pw_dir if entry else None,
    )


def privileges_prefix(user: TaskUser | None) -> list[str]:
    """The ``setpriv`` command line that runs the rest as ``user`` (none if already so)."""
    if user is None or (user.uid, user.gid) == (os.geteuid(), os.getegid()):
        return []
    if os.geteuid() != 0:
        raise TaskRejectedError(
            f"cannot run as uid {user.uid}: the agent does not run as root "
            "(leave user unset, or run the agent as root)"
        )
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise TaskRejectedError("running a process as another user needs setpriv (util-linux)")
    groups = ",".join(str(g) for g in user.groups)
    return [
        setpriv,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        f"--groups={groups}" if groups else "--clear-groups",
        "--",
    ]


# --------------------------------------------------------------------- cgroups


class Cgroups:
    """One cgroup per task under ``<mount>/<parent>``; see the module docstring."""

    def __init__(self, version: int, mounts: dict[str, Path], parent: str) -> None:
        self.version = version
        self.mounts = mounts  # controller -> mount point (v2: all the same)
        self.parent = parent

    @classmethod
    def detect(cls, parent: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> Cgroups | str:
        """The cgroups of this machine, or the reason limits cannot be enforced here."""
        v1: dict[str, Path] = {}
        v2: list[Path] = []
        try:
            lines = mountinfo.read_text().splitlines()
        except OSError as exc:
            return f"cannot read {mountinfo}: {exc.strerror}"
        for line in lines:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            point = Path(fields[4].replace("\\040", " "))
            if tail[0] == "cgroup2":
                v2.append(point)
            elif tail[0] == "cgroup":
                for option in tail[2].split(","):
                    if option in CONTROLLERS:
                        v1[option] = point
        for point in v2:
            with contextlib.suppress(OSError):
                available = (point / "cgroup.controllers").read_text().split()
                if all(c in available for c in CONTROLLERS):
                    return cls(2, dict.fromkeys(CONTROLLERS, point), parent)
        if all(c in v1 for c in CONTROLLERS):
            return cls(1, v1, parent)
        missing = [c for c in CONTROLLERS if c not in v1]
        return f"no cgroup v2 hierarchy with {', '.join(CONTROLLERS)} and no v1 {missing}"

    def describe(self) -> str:
        return f"cgroup v{self.version}"

    def _dirs(self, task_id: str) -> dict[str, Path]:
        name = _UNSAFE.sub("-", task_id)
        parent = Path(*(_UNSAFE.sub("-", p) for p in self.parent.split("/") if p))
        return {c: point / parent / name for c, point in self.mounts.items()}

    def create(self, task_id: str, limits: Limits) -> list[str]:
        """The task's cgroup with ``limits`` written; the ``cgroup.procs`` files to join."""
        try:
            return self._create(task_id, limits)
        except OSError as exc:
            self.remove(task_id)
            raise TaskRejectedError(
                f"cannot set up the cgroup for resources.limits ({self.describe()}): {exc}"
            ) from exc

    def _create(self, task_id: str, limits: Limits) -> list[str]:
        dirs = self._dirs(task_id)
        if self.version == 2:
            path = dirs["memory"]
            self._enable_controllers(self.mounts["memory"], path)
            path.mkdir(exist_ok=True)
            if limits.memory is not None:
                _write(path / "memory.max", limits.memory)
                if (path / "memory.swap.max").exists():
                    _write(path / "memory.swap.max", 0)
            if limits.pids is not None:
                _write(path / "pids.max", limits.pids)
            if limits.cpus is not None:
                quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
                _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return [str(path / "cgroup.procs")]
        joined = []
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
            joined.append(str(path / "cgroup.procs"))
        memory, pids, cpu = dirs["memory"], dirs["pids"], dirs["cpu"]
        if limits.memory is not None:
            _write(memory / "memory.limit_in_bytes", limits.memory)
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", limits.memory)
        if limits.pids is not None:
            _write(pids / "pids.max", limits.pids)
        if limits.cpus is not None:
            _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
            _write(cpu / "cpu.cfs_quota_us", max(1000, int(limits.cpus * CPU_PERIOD_US)))
        return joined

    def _enable_controllers(self, root: Path, leaf: Path) -> None:
        """v2: controllers must be enabled in every ancestor's subtree_control."""
        wanted = " ".join(f"+{c}" for c in CONTROLLERS)
        current = root
        for part in leaf.relative_to(root).parts:
            enabled = (current / "cgroup.subtree_control").read_text().split()
            if not all(c in enabled for c in CONTROLLERS):
                _write(current / "cgroup.subtree_control", wanted)
            current = current / part
            current.mkdir(exist_ok=True)

    def oom_killed(self, task_id: str) -> int | None:
        """The memory limit of a task the OOM killer killed in, or None."""
        path = self._dirs(task_id)["memory"]
        try:
            if self.version == 2:
                events = (path / "memory.events").read_text()
                limit_text = (path / "memory.max").read_text().strip()
            else:
                events = (path / "memory.oom_control").read_text()
                limit_text = (path / "memory.limit_in_bytes").read_text().strip()
        except OSError:
            return None
        counts = dict(line.split() for line in events.splitlines() if len(line.split()) == 2)
        if int(counts.get("oom_kill", "0")) == 0:
            return None
        return int(limit_text) if limit_text.isdigit() else 0

    def members(self, task_id: str) -> list[int]:
        """Every process still in the task's cgroup (also those that left its group)."""
        try:
            text = (self._dirs(task_id)["pids"] / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def remove(self, task_id: str) -> None:
        for path in set(self._dirs(task_id).values()):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cgroup.remove_failed", path=str(path), error=str(exc))
            # The node's cgroup too once its last task is gone (busy otherwise: fine).
            with contextlib.suppress(OSError):
                path.parent.rmdir()


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")
