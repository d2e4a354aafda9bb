"""A process task's log: when each line was written, and reading it across rotation.

A process task writes its own log file (see ``shoal.runtimes.process``), so no
line carries the time it was written. The runtime keeps that time on the side,
in ``output.times`` beside ``output.log``: one line ``<size> <mtime_ns>`` per
growth of the log it observed, meaning "the first ``size`` bytes were all
written by ``mtime_ns``" (the log's modification time, in nanoseconds since
the epoch). A line of output gets the time of the first entry past its
newline. While the agent runs, one follower for all of the runtime's tasks
(``ProcessRuntime``) observes every live task's log every ``FOLLOW_INTERVAL``,
so:

- the last line of each growth gets the time of its own write (the
  modification time is that write's), the lines before it in the same growth
  at most ``FOLLOW_INTERVAL`` late;
- lines written while no agent followed (the agent was down, or the task was
  adopted by a restarted agent) are stamped when they are first seen, with the
  log's modification time then: the time of the last of them, at least the
  last time recorded before (an upper bound, as before the index existed, but
  only for what no agent saw);
- every reader extends the index the same way before it times what it read,
  so a line's time, once given, stays the same for every later read.

Times are upper bounds: a line is never stamped earlier than it was written
(to the resolution of the file system's clock, a few milliseconds).

Rotation is copytruncate (``ProcessRuntime._rotate``): the index goes with the
copy. Before the truncate, one entry covers everything copied; ``output.times``
then becomes ``output.times.1`` beside ``output.log.1`` (older ones shift with
the logs'), and the new index starts with ``0 <time>``, a floor that times no
byte (none is below offset 0) but bounds later approximations below. A log
truncated by somebody else (its size went down) starts a new index the same way,
with no copy: its old entries no longer describe its bytes.

Bounded: at most one entry per observation (``FOLLOW_INTERVAL``) per task,
only when the log grew, and an index that passes ``MAX_INDEX_BYTES`` (about
9,000 entries) has its older half thinned to a quarter of that many entries,
evenly spaced in time: those lines' times get coarser, never earlier, and stay
within about two spacings, (the older half's time span) / 2,000, of the truth,
however often it happens (a day of steady output: under two minutes). An entry
torn by a crash mid-append is cut off, and so are zeros a crash left at the end;
an entry that does not move past the one before it is ignored.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import structlog

from shoal.runtimes.base import LogLine

log = structlog.get_logger(__name__)

LOG_NAME = "output.log"
INDEX_NAME = "output.times"
# How often the follower looks at every live task's log.
FOLLOW_INTERVAL = 0.25
MAX_INDEX_BYTES = 256 * 1024
_READ_CHUNK = 64 * 1024
# Enough of an index's end to hold its last entry (two integers and a space).
_TAIL_BYTES = 128


def _parse(data: bytes) -> list[tuple[int, int]]:
    """The entries of complete lines in ``data``; malformed ones are skipped."""
    entries = []
    for line in data.split(b"\n"):
        size, _, ns = line.partition(b" ")
        if size.isdigit() and ns.isdigit():
            entries.append((int(size), int(ns)))
    return entries


def _spaced(entries: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """At most about ``count`` of ``entries``, spread evenly over their time span (the
    last always kept): a line then loses at most about one spacing, however often the
    index is compacted, where halving the same entries again and again would double
    the old lines' error each time."""
    if len(entries) <= count or count <= 0:
        return entries
    spacing = (entries[-1][1] - entries[0][1]) / count
    kept: list[tuple[int, int]] = []
    for size, ns in entries[:-1]:
        if not kept or ns - kept[-1][1] >= spacing:
            kept.append((size, ns))
    kept.append(entries[-1])
    return kept


def _entry(size: int, ns: int) -> bytes:
    return b"%d %d\n" % (size, ns)


def _as_time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class TimeIndex:
    """The writing side of one task's ``output.times`` (the runtime holds one per task).

    Not thread-safe: the runtime calls it from its event loop, or from a thread
    while it holds the task's lock (rotation), never both at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0  # bytes of the log the index covers
        self.last_ns = 0  # the time of the last entry (or the floor)
        self.bytes = 0  # the index file's own size
        self._failed = False
        self._load()

    def _load(self) -> None:
        """Only the last entry is needed to go on appending: read the file's end."""
        try:
            with open(self.path, "rb") as f:
                self.bytes = f.seek(0, os.SEEK_END)
                f.seek(max(0, self.bytes - _TAIL_BYTES))
                tail = f.read()
        except FileNotFoundError:
            return
        start = self.bytes - len(tail)
        aligned = start == 0  # the tail starts at an entry's start
        if b"\n" not in tail and start > 0:
            # A crash can leave more than an entry's worth of zeros at the end (space
            # allocated, never written): find the last entry in the whole file.
            try:
                whole = self.path.read_bytes()[: self.bytes]
            except OSError as exc:
                self._failure(exc)
                return
            end = whole.rfind(b"\n") + 1
            start = whole.rfind(b"\n", 0, max(0, end - 1)) + 1
            tail, aligned = whole[start:], True
        complete = tail[: tail.rfind(b"\n") + 1]
        if len(complete) < len(tail):  # torn by a crash mid-append: cut it off
            self.bytes = start + len(complete)
            try:
                os.truncate(self.path, self.bytes)
            except OSError as exc:
                self._failure(exc)
        entries = _parse(complete if aligned else complete.split(b"\n", 1)[1])
        if entries:
            self.size, self.last_ns = entries[-1]

    def observe(self, size: int, mtime_ns: int) -> None:
        """The log is ``size`` bytes long and was last written at ``mtime_ns``."""
        if size == self.size:
            return
        if size < self.size:  # truncated behind our back: its old entries describe nothing
            self.restart()
        ns = max(mtime_ns, self.last_ns)
        self._append(_entry(size, ns))
        self.size, self.last_ns = size, ns
        if self.bytes > MAX_INDEX_BYTES:
            self._compact()

    def rotated(self, copied: int | None, mtime_ns: int) -> None:
        """The log was copied (``copied`` bytes, None: not kept) and is about to be
        truncated: an entry for the copy, the index moves to ``.1``, a new one starts."""
        if copied is not None:
            self.observe(copied, mtime_ns)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self.restart()

    def restart(self) -> None:
        """A new index for a log that starts again from offset 0, floored at the last time."""
        self._replace(_entry(0, self.last_ns))
        self.size = 0

    def _append(self, entry: bytes) -> None:
        try:
            with open(self.path, "ab") as f:
                f.write(entry)
        except OSError as exc:  # readers fall back to the log's modification time
            self._failure(exc)
            return
        self.bytes += len(entry)

    def _compact(self) -> None:
        """Thin the older half to half as many entries, evenly spaced in time; the
        first entry (often the floor) and the newer half stay exact."""
        try:
            entries = _parse(self.path.read_bytes())
        except OSError as exc:
            self._failure(exc)
            return
        half = len(entries) // 2
        kept = entries[:1] + _spaced(entries[1:half], half // 2) + entries[half:]
        self._replace(b"".join(_entry(size, ns) for size, ns in kept))

    def _replace(self, data: bytes) -> None:
        """The whole index becomes ``data``, at once for any reader."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._failure(exc)
            return
        self.bytes = len(data)

    def _failure(self, exc: OSError) -> None:
        if not self._failed and self.path.parent.exists():
            log.warning("cannot keep a log's time index", path=str(self.path), error=str(exc))
        self._failed = True


class TimeLookup:
    """The reading side: times of increasing offsets in one generation of a log,
    read from its index as it grows (one per reader)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._ino = 0
        self._pending = b""
        self._entries: deque[tuple[int, int]] = deque()
        self._last = -1  # the largest size read so far: later entries must pass it

    def time_of(self, offset: int) -> datetime | None:
        """When the byte at ``offset`` was written (an upper bound); None if the index
        does not reach it. Offsets must not go down between calls."""
        while True:
            while self._entries and self._entries[0][0] <= offset:
                self._entries.popleft()
            if self._entries:
                return _as_time(self._entries[0][1])
            if not self._refill():
                return None

    def _refill(self) -> bool:
        """Read the entries appended since; True if there were any."""
        try:
            ino = os.stat(self.path).st_ino
            if self._file is None or ino != self._ino:  # new, or compacted: read it anew
                self.close()
                self._file = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
                self._ino = os.fstat(self._file.fileno()).st_ino
            data = self._file.read()
        except FileNotFoundError:
            return False
        data, self._pending = self._pending + data, b""
        end = data.rfind(b"\n") + 1
        data, self._pending = data[:end], data[end:]
        found = False
        for size, ns in _parse(data):
            if size > self._last:
                self._entries.append((size, ns))
                self._last = size
                found = True
        return found

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending = b""


def tail_offset(f: IO[bytes], lines: int) -> int:
    """Offset where the last ``lines`` lines of ``f`` start (a final partial line counts)."""
    end = f.seek(0, os.SEEK_END)
    if lines <= 0:
        return end
    found = 0
    pos = end
    while pos > 0:
        start = max(0, pos - 8192)
        f.seek(start)
        block = f.read(pos - start)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) != -1:
            if start + index != end - 1:  # the newline ending the last line opens nothing
                found += 1
                if found == lines:
                    return start + index + 1
        pos = start
    return 0


class LogReader:
    """Reads a task's log in complete lines, each with its time, across copytruncate.

    ``read`` must be called with the task's lock held (rotation takes it too).
    """

    def __init__(self, task_dir: Path, tail: int | None, index: TimeIndex) -> None:
        self.path = task_dir / LOG_NAME
        self.tail = tail
        self.index = index
        self.times = TimeLookup(index.path)
        self.file: IO[bytes] | None = None
        self.pos = 0
        self.partial = b""
        self.rotations: int | None = None

    def open(self, rotations: int) -> None:
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 - kept open across reads
        except FileNotFoundError:
            return
        self.pos = tail_offset(self.file, self.tail) if self.tail is not None else 0
        self.rotations = rotations

    def read(self, rotations: int) -> list[LogLine]:
        """The complete lines written since the last read."""
        if self.file is None:
            self.open(rotations)
            if self.file is None:
                return []
        lines: list[LogLine] = []
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if rotations != self.rotations or size < self.pos:
            # Copytruncated since the last read: the unread rest is in the newest copy,
            # and its times in the index that went with it.
            if rotations - (self.rotations or 0) <= 1:
                lines += self._rest_of(self.path.with_name(self.path.name + ".1"))
            self.rotations = rotations
            self.pos = 0
            self.times.close()
            self.times = TimeLookup(self.index.path)
        start = self.file.seek(self.pos)
        data = b""
        while chunk := self.file.read(_READ_CHUNK):
            data += chunk
        self.pos = self.file.tell()
        stat = os.fstat(self.file.fileno())
        self.index.observe(stat.st_size, stat.st_mtime_ns)
        lines += self._lines(data, start, self.times, stat.st_mtime_ns)
        return lines

    def rest(self) -> LogLine | None:
        """The final line if it has no newline (once the task has ended)."""
        if not self.partial or self.file is None:
            return None
        mtime = os.fstat(self.file.fileno()).st_mtime_ns
        at = self.times.time_of(self.pos - 1) or _as_time(mtime)
        text, self.partial = self.partial, b""
        return LogLine(text.decode(errors="replace"), at)

    def _lines(self, data: bytes, start: int, times: TimeLookup, mtime_ns: int) -> list[LogLine]:
        """``data`` (read from ``start``) in lines, each timed by its newline's offset."""
        lines = []
        begin = 0
        while (end := data.find(b"\n", begin)) != -1:
            text = self.partial + data[begin:end]
            self.partial = b""
            # No entry reaches it only when the index cannot be written: the old way.
            at = times.time_of(start + end) or _as_time(mtime_ns)
            lines.append(LogLine(text.decode(errors="replace"), at))
            begin = end + 1
        self.partial += data[begin:]
        return lines

    def _rest_of(self, rotated: Path) -> list[LogLine]:
        try:
            with open(rotated, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_size < self.pos:
                    return []
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        times = TimeLookup(self.index.path.with_name(self.index.path.name + ".1"))
        try:
            return self._lines(data, self.pos, times, stat.st_mtime_ns)
        finally:
            times.close()

    def close(self) -> None:
        self.times.close()
        if self.file is not None:
            self.file.close()
            self.file = None
