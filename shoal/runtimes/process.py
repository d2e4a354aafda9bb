"""The ``process`` runtime: tasks are plain subprocesses of the node.

Tasks must outlive the agent. Each one runs in its own session and process
group (``start_new_session``), writes stdout and stderr straight into its own
log file (opened ``O_APPEND`` and handed to the child, no pipe through the
agent), and is described by a record file, so a restarted agent finds it again
from ``<state_dir>/tasks/<task_id>/record.json`` alone.

Exit codes after a restart
    Only a parent can collect a child's exit status, and after a restart the
    agent is no longer the parent. So every task runs under a tiny ``/bin/sh``
    wrapper (a few hundred KiB, against ~10 MiB for a Python supervisor)::

        trap : HUP INT QUIT TERM USR1 USR2
        f=$1; shift
        read -r go || { echo unstarted > "$f"; exit 125; }; exec </dev/null
        "$@"; code=$?; printf '%s\\n' "$code" > "$f"; exit "$code"

    A signal with a handler is reset to its default in the exec'd child, so the
    task sees signals exactly as if it ran alone, while the wrapper survives the
    same group-wide signal and writes the child's status (``128+N`` for a death
    by signal N) into ``exit`` beside the record. The path comes in as ``$1``
    rather than an environment variable so the task's environment is exactly
    what the spec asked for. The executable is resolved here and passed as an
    absolute path so the shell never runs one of its builtins instead (``echo``,
    ``test``, ...); ``argv[0]`` is therefore the resolved path.

    Alternatives considered: ``PR_SET_CHILD_SUBREAPER`` and pidfds only help
    while this agent process lives; ptrace is intrusive. The shell's ``$?``
    cannot tell ``exit 137`` from a death by SIGKILL, so codes ``128+N`` are
    reported as signal N, the same convention as Docker and shells. When the
    wrapper itself is killed (SIGKILL to the group) nothing is written: for our
    own children the status comes from ``waitpid``, after a ``stop`` that sent
    SIGKILL we write 137 ourselves, otherwise the code is unknown.

Starting atomically with the record
    A task the agent started must be found again after the agent dies, at any
    moment. So the wrapper's stdin is a pipe from the agent, and it runs the
    command only after reading a line from it: the agent starts the wrapper,
    writes the record, and only then sends that line. If the agent dies before
    (between the fork and the record), the pipe reaches end-of-file, the wrapper
    exits without running anything, and a restarted agent starts the task once;
    if it dies between the record and the line, the recovered record shows a
    task that never ran (``exit`` holds ``unstarted``). Either way nothing runs
    that no record names, and nothing runs twice.

Finding the task again
    The record holds the group leader's pid (the wrapper; pgid == pid) and its
    start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``). A
    pid whose start time differs was reused by an unrelated process: the task
    has exited, and its group is never signalled. Our own children are checked
    with ``waitid(WNOWAIT)`` so the leader stays a zombie, which pins the pgid,
    until the rest of its group has been SIGKILLed; only then is it reaped. No
    thread per child and no busy polling: ``wait()`` sleeps on the leader's
    pidfd (readable once it exits, whether or not it is our child) and looks
    again every couple of seconds; without pidfds it polls.

Stopping
    The signal goes to the whole group. The wrapper traps the catchable
    signals (it must live to record the exit code), so a signal sent before it
    has forked the command would be eaten by the trap and the command would
    only meet SIGKILL at the end of its grace: ``stop`` therefore first waits
    (briefly, ``_COMMAND_START``) until a member of the group other than the
    wrapper runs, then signals the group once.

Logs
    The child writes its own file, so no line carries the time it was written.
    The runtime keeps those times on the side (``shoal.runtimes.processlogs``):
    while it runs, one follower for all of its tasks (one asyncio task, a
    ``stat`` per live task's log every ``FOLLOW_INTERVAL``, no thread or process
    per task) appends ``<size> <mtime>`` to the task's ``output.times`` whenever
    the log grew. ``timed_logs`` gives each line the time of the first entry past
    it: the time of its own write for the last line of each growth, at most
    ``FOLLOW_INTERVAL`` late for the others, and so ``since`` and the merge of
    several tasks' histories work on those times. Only lines written while no
    runtime followed the task (the agent was down; the index is kept across an
    adoption and goes on where it stopped) share the log's modification time when
    they were first seen: an upper bound, at least the last time recorded before.
    Rotation is copytruncate, because the child holds the file open: when
    ``output.log`` exceeds ``log_max_bytes`` it is copied to ``output.log.1``
    (older copies shifted up to ``log_files``) and truncated; the child's
    ``O_APPEND`` writes continue at the new end. Lines written between the copy
    and the truncate are lost, the usual price of copytruncate. The time index
    goes with the copy (``output.times.1``) and a new one starts. The check rides
    on the follower and on ``inspect``/``wait``/``logs`` (one ``stat``).

User and limits
    ``user`` and ``resources.limits`` are applied as ``shoal.runtimes.isolation``
    describes: a joiner and ``setpriv`` between the wrapper and the command put
    it in its cgroup and drop its privileges before it runs. The option
    ``process.user`` (``shoal agent --process-user``) is the default user;
    ``process.cgroup-parent`` (default ``shoal``) where task cgroups go.

Limits: a task without resource limits that calls ``setsid`` itself leaves its
group and is not stopped with it (a task with limits is: its cgroup's
processes are killed too); ``/proc`` is required.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from shoal.errors import RuntimeBackendError, TaskRejectedError
from shoal.models import RuntimeInfo, TaskTemplate
from shoal.models.units import format_size
from shoal.runtimes.base import (
    HISTORY_END,
    ExitStatus,
    LogLine,
    Observation,
    Runtime,
    RuntimeSettings,
    TaskHandle,
    TaskLaunch,
)
from shoal.runtimes.isolation import (
    JOINER,
    Cgroups,
    TaskUser,
    privileges_prefix,
    resolve_user,
)
from shoal.runtimes.processlogs import (
    FOLLOW_INTERVAL,
    INDEX_NAME,
    LOG_NAME,
    LogReader,
    TimeIndex,
)

log = structlog.get_logger(__name__)

SHELL = "/bin/sh"
WRAPPER = (
    "trap : HUP INT QUIT TERM USR1 USR2\n"
    "f=$1; shift\n"
    # The go-ahead, sent once the record is written (see "Starting atomically").
    'read -r go || { echo unstarted > "$f"; exit 125; }\n'
    "exec </dev/null\n"
    '"$@"\n'
    "code=$?\n"
    'printf \'%s\\n\' "$code" > "$f"\n'
    'exit "$code"\n'
)
# The only variables taken from the agent's own environment.
BASE_ENV = ("PATH", "HOME", "LANG")
UNKNOWN_EXIT = "exited while the agent was away; exit status unknown"
NEVER_STARTED = "never ran: the agent stopped while starting it"
_UNSTARTED = "unstarted"
# ``stop`` has a parameter named ``signal``; keep the one constant it needs here.
_SIGKILL = signal.SIGKILL

_WAIT_POLL = 0.15
# With a pidfd, ``wait`` wakes at the exit itself; it still looks every so
# often (the log rotation check rides on it).
_WAIT_IDLE = 2.0
_STOP_POLL = 0.05
_LOG_POLL = 0.2
# Seconds before a log that could not be rotated (a full disk, say) is tried again.
ROTATION_RETRY = 60.0
T = TypeVar("T")
_KILL_TIMEOUT = 5.0
# How long ``stop`` waits for the wrapper to fork a command that was just let go.
_COMMAND_START = 2.0
# How long one scan of /proc answers for every process group (see ``_Groups``).
_GROUPS_FRESH = _STOP_POLL


class _ExitSignal:
    """Wakes a waiter when a process exits: its pidfd becomes readable (Linux 5.3+).

    One file descriptor per waited task instead of polling every task several
    times a second. The pidfd is opened after the record's pid is known; the
    waiter then inspects the task, which checks the pid's start time, so a pid
    reused before the pidfd was opened is still told apart.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._exited = asyncio.Event()
        self._loop.add_reader(fd, self._exited.set)

    @classmethod
    def open(cls, pid: int) -> _ExitSignal | None:
        """None where pidfds are missing or the process is already gone: then poll."""
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return None
        try:
            return cls(pidfd_open(pid))
        except OSError:
            return None

    async def wait(self, timeout: float) -> None:
        """Until the process has exited, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._exited.wait()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


def _observe_logs(logs: list[tuple[Path, TimeIndex]]) -> None:
    """Each log's size and modification time into its index (the tasks' locks held)."""
    for path, index in logs:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        index.observe(stat.st_size, stat.st_mtime_ns)


class _Leader(enum.Enum):
    """What became of a task's group leader."""

    RUNNING = "running"
    ZOMBIE = "zombie"  # exited, not reaped: the pgid is still ours
    GONE = "gone"  # exited and reaped
    REUSED = "reused"  # the pid now belongs to another process


@dataclass(frozen=True, slots=True)
class _ProcStat:
    """The few fields of ``/proc/<pid>/stat`` this runtime needs."""

    state: str
    ppid: int
    pgrp: int
    start_ticks: int


@dataclass(frozen=True, slots=True)
class _Record:
    """What ``record.json`` and the handle's ``data`` hold."""

    task_id: str
    pid: int
    start_ticks: int
    started_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "pid": self.pid,
            "startTicks": self.start_ticks,
            "startedAt": self.started_at.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> _Record:
        return cls(
            task_id=str(raw["taskId"]),
            pid=int(raw["pid"]),
            start_ticks=int(raw["startTicks"]),
            started_at=datetime.fromisoformat(str(raw["startedAt"])),
        )


def _proc_stat(pid: int) -> _ProcStat | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    if b")" not in raw:
        return None
    # Field 2 (comm) may hold spaces and parentheses: the rest starts after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[2] field 5 (pgrp),
    # fields[19] field 22 (starttime).
    return _ProcStat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


class _Groups:
    """Live (non-zombie) members of every process group, from one scan of ``/proc``.

    Linux lists no process group's members, only every process: a scan per task
    made stopping 200 tasks read ``/proc`` hundreds of times over. A scan is
    shared for ``_GROUPS_FRESH`` by every task that asks meanwhile. A stale answer
    can only say a group still has members (a group with none gets no new ones:
    only a member can fork into it), so a waiter looks again a little later.
    """

    def __init__(self) -> None:
        self._taken = -_GROUPS_FRESH
        self._members: dict[int, list[int]] = {}

    def members(self, pgid: int, fresh: bool = False) -> list[int]:
        now = time.monotonic()
        if fresh or now - self._taken >= _GROUPS_FRESH:
            self._members = self._scan()
            self._taken = now
        return self._members.get(pgid, [])

    @staticmethod
    def _scan() -> dict[int, list[int]]:
        members: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _proc_stat(int(name))
                if stat is not None and stat.state not in ("Z", "X"):
                    members.setdefault(stat.pgrp, []).append(int(name))
        return members


def _children(pid: int) -> list[int] | None:
    """The children of ``pid`` (``/proc/PID/task/PID/children``; None where the
    kernel has no such file)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return None if not os.path.exists(f"/proc/{pid}") else []
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return None


def _host_problem() -> str | None:
    if not os.access(SHELL, os.X_OK):
        return f"{SHELL} is missing or not executable"
    if not os.path.exists("/proc/self/stat"):
        return "/proc is not mounted"
    return None


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal process group", pgid=pgid, signal=sig)


def parse_signal(name: str) -> signal.Signals:
    """``"SIGTERM"``, ``"term"`` or ``"15"`` → ``signal.SIGTERM``."""
    if name.isdigit():
        return signal.Signals(int(name))
    upper = name.upper()
    try:
        return signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper]
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def exit_status(code: int) -> ExitStatus:
    """The status for a shell-style exit code; ``128+N`` means killed by signal N."""
    if 128 < code < 128 + signal.NSIG:
        number = code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return ExitStatus(exit_code=code, signal=number, message=f"killed by {name}")
    return ExitStatus(exit_code=code, message=f"exited with code {code}")


class ProcessRuntime(Runtime):
    """Runs tasks as plain subprocesses in their own process groups."""

    name = "process"
    marks_history = True

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._exits: dict[str, ExitStatus] = {}
        self._killed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._rotations: dict[str, int] = {}
        # The log follower (see "Logs"): the tasks it looks at, each one's time index.
        self._followed: set[str] = set()
        self._indexes: dict[str, TimeIndex] = {}
        self._follower: asyncio.Task[None] | None = None
        # Tasks whose log could not be rotated: when (loop time) it last failed.
        self._rotation_failed: dict[str, float] = {}
        self._cgroups: Cgroups | str | None = None
        self._groups = _Groups()

    # -- paths and records -------------------------------------------------

    def _task_dir(self, task_id: str) -> Path:
        if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
            raise TaskRejectedError(f"invalid task id {task_id!r}")
        return self.settings.state_dir / "tasks" / task_id

    def _log_path(self, task_id: str) -> Path:
        return self._task_dir(task_id) / LOG_NAME

    def _index(self, task_id: str) -> TimeIndex:
        index = self._indexes.get(task_id)
        if index is None:
            index = self._indexes[task_id] = TimeIndex(self._task_dir(task_id) / INDEX_NAME)
        return index

    def _exit_path(self, task_id: str) -> Path:
        return self._task_dir(task_id) / "exit"

    def _record(self, handle: TaskHandle) -> _Record:
        try:
            return _Record.from_json(handle.data)
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeBackendError(
                f"malformed process handle for task {handle.task_id}"
            ) from exc

    def _handle(self, record: _Record) -> TaskHandle:
        return TaskHandle(task_id=record.task_id, runtime=self.name, data=record.to_json())

    def _lock(self, task_id: str) -> asyncio.Lock:
        return self._locks.setdefault(task_id, asyncio.Lock())

    @staticmethod
    def _write_atomically(path: Path, text: str) -> None:
        """Write ``path`` whole or not at all, as seen by a reader on this machine.

        No fsync: the record must outlive the agent, not the machine. The page cache
        keeps it through an agent crash, and a machine that goes down ends every task
        a record names (a record lost with it is a task that no longer runs; a torn
        one is skipped by ``recover``). An fsync per task made each start wait for a
        journal commit: about half of the agent's time starting 200 tasks.
        """
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    def _read_exit_file(self, task_id: str) -> int | str | None:
        """The code the wrapper wrote, ``"unstarted"``, or None if it wrote nothing."""
        try:
            text = self._exit_path(task_id).read_text().strip()
        except OSError:
            return None
        if text == _UNSTARTED:
            return text
        try:
            return int(text)
        except ValueError:
            return None

    def _write_exit_file(self, task_id: str, code: int) -> None:
        """Record ``code`` unless the wrapper already did; later restarts read it."""
        try:
            fd = os.open(self._exit_path(task_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except (FileExistsError, FileNotFoundError):
            return
        with os.fdopen(fd, "w") as f:
            f.write(f"{code}\n")

    def cgroups(self) -> Cgroups | str:
        """This node's cgroups, or why ``resources.limits`` cannot be enforced here."""
        if self._cgroups is None:
            parent = self.settings.options.get("cgroup-parent", "shoal")
            self._cgroups = Cgroups.detect(f"{parent}/{self.settings.node_name}")
        return self._cgroups

    def task_user(self, template: TaskTemplate) -> TaskUser | None:
        """Who a task runs as: its ``user``, else the ``process.user`` option, else the agent."""
        spec = template.user or self.settings.options.get("user")
        return resolve_user(spec) if spec else None

    def file_owner(self, template: TaskTemplate) -> tuple[int, int]:
        user = self.task_user(template)
        return (os.geteuid(), os.getegid()) if user is None else (user.uid, user.gid)

    # -- the runtime interface ---------------------------------------------

    async def describe(self) -> RuntimeInfo:
        problem = _host_problem()
        if problem is not None:
            return RuntimeInfo(name=self.name, available=False, message=problem)
        cgroups = self.cgroups()
        limits = (
            f"limits through {cgroups.describe()}"
            if isinstance(cgroups, Cgroups)
            else f"no limits ({cgroups})"
        )
        return RuntimeInfo(
            name=self.name, available=True, message=f"plain processes under {SHELL}; {limits}"
        )

    async def start(self, launch: TaskLaunch) -> TaskHandle:
        # fork/exec, mkdir and file writes block: run them off the event loop.
        popen, record = await asyncio.to_thread(self._spawn, launch)
        self._children[launch.task_id] = popen
        self._follow(launch.task_id)
        return self._handle(record)

    def _spawn(self, launch: TaskLaunch) -> tuple[subprocess.Popen[bytes], _Record]:
        template = launch.template
        task_dir = self._task_dir(launch.task_id)
        env = {key: os.environ[key] for key in BASE_ENV if key in os.environ}
        env.setdefault("PATH", os.defpath)
        user = self.task_user(template)
        if user is not None:
            env.update(user.env())
        env.update(template.env)
        env.update(launch.env)
        prefix = privileges_prefix(user)

        if template.workdir is not None:
            workdir = Path(template.workdir)
            if not workdir.is_dir():
                raise TaskRejectedError(f"workdir {template.workdir} does not exist on this node")
        else:
            workdir = task_dir / "work"
        executable = self._resolve(template.command[0], workdir, env["PATH"])

        # Each inode made here costs up to a millisecond on ext4 once many were deleted
        # lately (see docs/benchmarks.md): no call that only finds a directory there.
        fresh = self._make_task_dir(task_dir)
        if not fresh and (task_dir / "record.json").exists():
            raise RuntimeBackendError(f"task {launch.task_id} already exists; remove it first")
        if template.workdir is None:
            workdir.mkdir(exist_ok=not fresh)
        if user is not None and template.workdir is None:
            self._give_workdir(task_dir, workdir, user)
        limits = template.resources.limits
        if limits is not None:
            cgroups = self.cgroups()
            if not isinstance(cgroups, Cgroups):
                raise TaskRejectedError(f"resources.limits cannot be enforced here: {cgroups}")
            joined = cgroups.create(launch.task_id, limits)
            prefix = [SHELL, "-c", JOINER, "shoal-join", *joined, "--", *prefix]
        exit_path = self._exit_path(launch.task_id)
        if not fresh:  # an earlier start's exit code says nothing of this one
            exit_path.unlink(missing_ok=True)
        argv = [SHELL, "-c", WRAPPER, "shoal-task", str(exit_path), *prefix, executable]
        argv += template.command[1:] + template.args
        fd = os.open(self._log_path(launch.task_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        gate, go = os.pipe()  # both close-on-exec; the child gets ``gate`` as its stdin
        try:
            popen = subprocess.Popen(
                argv,
                stdin=gate,
                stdout=fd,
                stderr=fd,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(go)
            shutil.rmtree(task_dir, ignore_errors=True)
            raise RuntimeBackendError(f"cannot start task {launch.task_id}: {exc}") from exc
        finally:
            os.close(fd)
            os.close(gate)
        try:
            record = self._record_started(launch.task_id, popen)
            os.write(go, b"go\n")  # the record exists: now the command may run
        except OSError as exc:
            os.close(go)  # end-of-file before the line: the wrapper gives up
            popen.wait()
            shutil.rmtree(task_dir, ignore_errors=True)
            raise RuntimeBackendError(f"cannot record task {launch.task_id}: {exc}") from exc
        except BaseException:
            os.close(go)
            raise
        os.close(go)
        log.info("task started", task_id=launch.task_id, pid=popen.pid, executable=executable)
        return popen, record

    @staticmethod
    def _make_task_dir(task_dir: Path) -> bool:
        """Create ``task_dir``; False if it was there already (an earlier start's)."""
        try:
            os.mkdir(task_dir)
        except FileNotFoundError:  # the node's first task
            task_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            return False
        return True

    def _record_started(self, task_id: str, popen: subprocess.Popen[bytes]) -> _Record:
        task_dir = self._task_dir(task_id)

        # Our unreaped child: /proc/<pid>/stat exists even if it already exited.
        stat = _proc_stat(popen.pid)
        if stat is None:
            popen.kill()
            popen.wait()
            shutil.rmtree(task_dir, ignore_errors=True)
            raise RuntimeBackendError(f"cannot read /proc/{popen.pid}/stat of the new task")
        record = _Record(task_id, popen.pid, stat.start_ticks, datetime.now(UTC))
        self._write_atomically(task_dir / "record.json", json.dumps(record.to_json()))
        return record

    @staticmethod
    def _give_workdir(task_dir: Path, workdir: Path, user: TaskUser) -> None:
        """The default workdir belongs to the task's user, who may pass through to it."""
        os.chown(workdir, user.uid, user.gid)
        for directory in (task_dir, task_dir.parent):
            os.chmod(directory, os.stat(directory).st_mode | 0o111)

    @staticmethod
    def _resolve(command: str, workdir: Path, path: str) -> str:
        if "/" in command:
            candidate = str(workdir / command)  # an absolute command replaces workdir
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
            raise TaskRejectedError(f"executable {command!r} does not exist or is not executable")
        found = shutil.which(command, path=path)
        if found is None:
            raise TaskRejectedError(f"executable {command!r} not found on PATH ({path})")
        return os.path.abspath(found)

    async def inspect(self, handle: TaskHandle) -> Observation:
        record = self._record(handle)
        status = self._exits.get(record.task_id)
        if status is None:
            leader = self._leader(record)
            if leader is _Leader.RUNNING:
                await self._maybe_rotate(record.task_id)
                return Observation(running=True, pid=record.pid, started_at=record.started_at)
            status = self._finish(record, leader)
        return Observation(running=False, pid=record.pid, started_at=record.started_at, exit=status)

    async def wait(self, handle: TaskHandle) -> ExitStatus:
        record = self._record(handle)
        exited = _ExitSignal.open(record.pid)
        try:
            while True:
                observation = await self.inspect(handle)
                if observation.exit is not None:
                    return observation.exit
                if exited is None:
                    await asyncio.sleep(_WAIT_POLL)
                else:
                    await exited.wait(_WAIT_IDLE)
        finally:
            if exited is not None:
                exited.close()

    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None:
        sig = parse_signal(signal)
        record = self._record(handle)
        if not (await self.inspect(handle)).running:
            return
        if sig == _SIGKILL:
            self._killed.add(record.task_id)
        else:  # a catchable signal must reach the command, not only the wrapper's trap
            await self._wait_command_started(record)
        _kill_group(record.pid, sig)
        if await self._wait_group_gone(record, max(grace, 0.0)):
            if self._leader(record) is _Leader.RUNNING:
                self._killed.add(record.task_id)
            _kill_group(record.pid, _SIGKILL)
            if await self._wait_group_gone(record, _KILL_TIMEOUT):
                survivors = self._groups.members(record.pid, fresh=True)
                raise RuntimeBackendError(
                    f"task {record.task_id}: processes {survivors} survived SIGKILL"
                )
        if record.task_id not in self._exits:
            self._finish(record, self._leader(record))

    async def signal(self, handle: TaskHandle, signal: str) -> None:
        """Signal the command, the wrapper's child: the wrapper would die of an untrapped one."""
        sig = parse_signal(signal)
        record = self._record(handle)
        if not (await self.inspect(handle)).running:
            return
        await self._wait_command_started(record)
        for pid in self._commands(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def remove(self, handle: TaskHandle) -> None:
        task_id = handle.task_id
        if (await self.inspect(handle)).running:
            log.warning("removing a running task: killing it first", task_id=task_id)
            await self.stop(handle, "SIGKILL", 0.0)
        task_dir = self._task_dir(task_id)
        self._followed.discard(task_id)
        try:
            async with self._lock(task_id):  # no reader writes the time index meanwhile
                await asyncio.to_thread(shutil.rmtree, task_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RuntimeBackendError(f"cannot remove {task_dir}: {exc}") from exc
        cgroups = self.cgroups()
        if isinstance(cgroups, Cgroups):
            await asyncio.to_thread(cgroups.remove, task_id)
        tables = (
            self._children,
            self._exits,
            self._locks,
            self._rotations,
            self._indexes,
            self._rotation_failed,
        )
        for table in tables:
            table.pop(task_id, None)
        self._killed.discard(task_id)

    async def recover(self) -> list[TaskHandle]:
        handles = []
        for path in sorted((self.settings.state_dir / "tasks").glob("*/record.json")):
            try:
                record = _Record.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, KeyError, TypeError, ValueError) as exc:
                log.error("unreadable task record; skipping it", path=str(path), error=str(exc))
                continue
            if record.task_id != path.parent.name:
                log.error("task record names another task; skipping it", path=str(path))
                continue
            handles.append(self._handle(record))
            self._follow(record.task_id)  # its index goes on where it stopped
        return handles

    async def aclose(self) -> None:
        """Stop following logs; the tasks keep running."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def timed_logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine]:
        """Each line carries the time its task's time index gives it (see "Logs" in the
        module docstring); ``since`` is applied to those times here."""
        task_id = handle.task_id
        reader = LogReader(self._task_dir(task_id), tail, self._index(task_id))
        try:
            # Open before the first inspect, which may rotate: the reader then finds the
            # start of the output in the rotated copy.
            async with self._lock(task_id):
                reader.open(self._rotations.get(task_id, 0))
            marked = not follow  # the first read is the history: mark its end once
            while True:
                done = not follow or not (await self.inspect(handle)).running
                async with self._lock(task_id):
                    lines = reader.read(self._rotations.get(task_id, 0))
                for line in lines:
                    if since is None or line.time is None or line.time >= since:
                        yield line
                if done:
                    break
                if not marked:
                    yield HISTORY_END
                    marked = True
                await asyncio.sleep(_LOG_POLL)
            last = reader.rest()
            if last is not None and (since is None or last.time is None or last.time >= since):
                yield last
            if not marked:
                yield HISTORY_END
        finally:
            reader.close()

    # -- internals ---------------------------------------------------------

    def _leader(self, record: _Record) -> _Leader:
        popen = self._children.get(record.task_id)
        if popen is not None:
            if popen.returncode is not None:
                return _Leader.GONE
            try:
                result = os.waitid(os.P_PID, record.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # somebody else reaped it
                return _Leader.GONE
            return _Leader.RUNNING if result is None else _Leader.ZOMBIE
        stat = _proc_stat(record.pid)
        if stat is None:
            return _Leader.GONE
        if stat.start_ticks != record.start_ticks:
            return _Leader.REUSED
        if stat.state in ("Z", "X"):
            return _Leader.ZOMBIE
        return _Leader.RUNNING

    def _group_alive(self, record: _Record) -> bool:
        leader = self._leader(record)
        if leader is _Leader.RUNNING:
            return True
        if leader is _Leader.REUSED:  # a pgid is never reused while its group has members
            return False
        try:
            os.killpg(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        # Only zombies left (our own unreaped leader, orphans not yet reaped) counts as gone.
        return bool(self._groups.members(record.pid))

    async def _wait_command_started(self, record: _Record) -> None:
        """Until the group holds a process besides the wrapper (see "Stopping")."""
        wrapper = _cmdline(record.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _COMMAND_START
        while self._leader(record) is _Leader.RUNNING and loop.time() < deadline:
            if any(_cmdline(pid) != wrapper for pid in self._commands(record)):
                return
            await asyncio.sleep(_STOP_POLL / 5)

    def _commands(self, record: _Record) -> list[int]:
        """The wrapper's children in its group: the command (or a fork of the wrapper
        that is about to become it)."""
        children = _children(record.pid)
        if children is None:  # no children files: find them in a scan
            stats = ((pid, _proc_stat(pid)) for pid in self._groups.members(record.pid))
            return [pid for pid, stat in stats if stat is not None and stat.ppid == record.pid]
        return [pid for pid in children if (stat := _proc_stat(pid)) and stat.pgrp == record.pid]

    async def _wait_group_gone(self, record: _Record, within: float) -> bool:
        """Poll until nothing of the task's group runs; True if something still runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            alive = self._group_alive(record)
            if not alive or loop.time() >= deadline:
                return alive
            await asyncio.sleep(_STOP_POLL)

    def _finish(self, record: _Record, leader: _Leader) -> ExitStatus:
        """The leader has exited: kill what is left of its group, reap it, settle the status."""
        task_id = record.task_id
        if leader is _Leader.REUSED:
            log.info("task pid was reused; not signalling its group", task_id=task_id)
        else:
            _kill_group(record.pid, _SIGKILL)
        popen = self._children.pop(task_id, None)
        if popen is not None:
            returncode = popen.wait()
            code = returncode if returncode >= 0 else 128 - returncode
            self._write_exit_file(task_id, code)
            status = exit_status(code)
        else:
            recorded = self._read_exit_file(task_id)
            if recorded is None and task_id in self._killed:
                recorded = 128 + _SIGKILL
                self._write_exit_file(task_id, recorded)
            if recorded is None:
                status = ExitStatus(exit_code=None, message=UNKNOWN_EXIT)
            elif recorded == _UNSTARTED:
                status = ExitStatus(exit_code=None, message=NEVER_STARTED)
            else:
                status = exit_status(int(recorded))
        status = self._oom_checked(task_id, status)
        self._exits[task_id] = status
        log.info("task exited", task_id=task_id, exit_code=status.exit_code, why=status.message)
        return status

    def _oom_checked(self, task_id: str, status: ExitStatus) -> ExitStatus:
        """A SIGKILL in a cgroup that counted an OOM kill is reported as one."""
        cgroups = self.cgroups()
        if not isinstance(cgroups, Cgroups):
            return status
        for pid in cgroups.members(task_id):  # what left the process group dies too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, _SIGKILL)
        if status.signal != _SIGKILL:
            return status
        limit = cgroups.oom_killed(task_id)
        if limit is None:
            return status
        shown = f" (limit {format_size(limit)})" if limit else ""
        return ExitStatus(
            exit_code=status.exit_code,
            signal=status.signal,
            message=f"killed by the OOM killer: out of memory{shown}",
            oom_killed=True,
        )

    def _over_limit(self, task_id: str) -> bool:
        try:
            return self._log_path(task_id).stat().st_size > self.settings.log_max_bytes
        except FileNotFoundError:
            return False

    async def _maybe_rotate(self, task_id: str) -> None:
        if not self._over_limit(task_id):
            return
        loop = asyncio.get_running_loop()
        if self._rotation_failed.get(task_id, -ROTATION_RETRY) + ROTATION_RETRY > loop.time():
            return  # it failed a moment ago: each try shifts the older copies out
        async with self._lock(task_id):
            if self._over_limit(task_id):  # not rotated while this waited for the lock
                try:
                    await _to_the_end(asyncio.to_thread(self._rotate, task_id))
                except OSError as exc:
                    if task_id not in self._rotation_failed:
                        log.warning("cannot rotate a task's log", task_id=task_id, error=str(exc))
                    self._rotation_failed[task_id] = loop.time()
                    return
                self._rotation_failed.pop(task_id, None)
                self._rotations[task_id] = self._rotations.get(task_id, 0) + 1

    def _rotate(self, task_id: str) -> None:
        """Copytruncate the log; its time index goes with the copy (under the task's lock)."""
        path = self._log_path(task_id)
        index = self._index(task_id)
        keep = self.settings.log_files
        copied = None
        if keep > 0:
            for number in range(keep - 1, 0, -1):
                for current in (path, index.path):
                    older = current.with_name(f"{current.name}.{number}")
                    if older.exists():
                        os.replace(older, current.with_name(f"{current.name}.{number + 1}"))
            copy = path.with_name(f"{path.name}.1")
            shutil.copyfile(path, copy)
            copied = os.stat(copy).st_size
        # Everything copied was written by now (its modification time after the copy).
        index.rotated(copied, os.stat(path).st_mtime_ns)
        os.truncate(path, 0)

    def _follow(self, task_id: str) -> None:
        """Keep ``task_id``'s time index while it runs (see "Logs")."""
        self._followed.add(task_id)
        if self._follower is None or self._follower.done():
            self._follower = asyncio.create_task(self._follow_logs(), name="process-log-follower")

    async def _follow_logs(self) -> None:
        """One loop for every task: a ``stat`` of each followed log per interval, an
        index entry where it grew, a rotation where it passed the limit."""
        warned: set[str] = set()
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                await self._follow_once(warned)
            except Exception as exc:  # the next look tries again
                log.warning("cannot follow the tasks' logs", error=str(exc))

    async def _follow_once(self, warned: set[str]) -> None:
        """Look at every followed log (a ``stat`` each, on the loop); those that grew
        get their entries written by one thread, each under its task's lock (writing
        a task's first entry creates a file: an inode, up to a millisecond)."""
        grown: list[tuple[asyncio.Lock, Path, TimeIndex]] = []
        full = []
        try:
            for task_id in list(self._followed):
                lock = self._lock(task_id)
                if lock.locked():  # being rotated, read or removed: next time
                    continue
                path = self._log_path(task_id)
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    self._followed.discard(task_id)
                    continue
                except OSError as exc:  # one task's trouble must not end the others' times
                    if task_id not in warned:  # once, not every interval
                        log.warning("cannot follow a task's log", task_id=task_id, error=str(exc))
                        warned.add(task_id)
                    continue
                index = self._index(task_id)
                if size != index.size:
                    await lock.acquire()  # free: it does not wait
                    grown.append((lock, path, index))
                if task_id in self._exits:  # that was its last output
                    self._followed.discard(task_id)
                if size > self.settings.log_max_bytes:
                    full.append(task_id)
            if grown:
                logs = [(path, index) for _, path, index in grown]
                await _to_the_end(asyncio.to_thread(_observe_logs, logs))
        finally:
            for lock, _, _ in grown:
                lock.release()
        for task_id in full:
            await self._maybe_rotate(task_id)


async def _to_the_end(job: Awaitable[T]) -> T:
    """``job``'s result, waited for to its end even if the caller is cancelled meanwhile
    (then the cancel is raised after): work done under a lock, in a thread that cannot
    be stopped, must not outlive the lock."""
    future = asyncio.ensure_future(job)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        future.exception()  # retrieved: raised below instead
        raise cancelled
    return future.result()
