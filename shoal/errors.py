"""shoal's exceptions, one small tree.

    ShoalError
    ├── SpecError                 a spec document is malformed (file, line, field path)
    ├── NotFoundError             the named object does not exist
    ├── ConflictError             an optimistic-concurrency compare failed (lost the race)
    ├── ApplySetError             an apply set refused the apply (owned elsewhere, prune to empty)
    ├── SourceError               a Sync could not fetch its source (git, missing directory)
    ├── StoreError
    │   ├── StoreUnavailableError the store cannot be reached or refused the operation
    │   │   └── NotLeaderError    this manager does not (or no longer) hold the leadership
    │   └── CompactedError        a watch asked for a revision that was compacted away
    ├── RuntimeBackendError       a runtime plugin failed to do what was asked
    │   ├── RuntimeUnavailableError   the runtime cannot work on this node
    │   ├── TaskRejectedError     the task can never start here (bad executable, workdir, ...)
    │   └── ExecUnsupportedError  the task's runtime cannot run a command in it (``shoal exec``)
    ├── NodeUnavailableError      the node a call needs is not connected to the manager
    ├── AuthError                 a join token or credential was refused
    ├── DataKeyError              the data key is unreadable, or not the one data was sealed with
    ├── BusyError                 the manager sheds this call: too busy to serve it in time
    └── ApiError                  a remote call failed; carries the mapped code

Backend errors (sqlite3, gRPC, OS errors from runtimes) are mapped to the most
specific class here at the boundary, with ``raise ... from exc``.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every error shoal raises on purpose."""


class SpecError(ShoalError):
    """One or more problems in spec documents; each problem is ``FILE:LINE: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NotFoundError(ShoalError):
    """The named object does not exist."""


class ConflictError(ShoalError):
    """A compare-on-revision failed: somebody else changed the object first."""


class ApplySetError(ShoalError):
    """An apply set refused the apply: an object belongs to another set, or the
    apply would prune every object of the set without ``allow empty``."""


class SourceError(ShoalError):
    """A Sync's source could not be fetched: git failed, a directory is missing.

    ``revision`` is set when the source was reached but its content is unusable.
    """

    def __init__(self, message: str, revision: str | None = None) -> None:
        self.revision = revision
        super().__init__(message)


class StoreError(ShoalError):
    """The store failed."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached, is closed, or is locked by another manager."""


class NotLeaderError(StoreUnavailableError):
    """This manager is not the leader (or was deposed): its writes are refused."""


class CompactedError(StoreError):
    """The requested revision is older than the oldest revision the store keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        self.requested = requested
        self.compacted = compacted
        super().__init__(f"revision {requested} was compacted (oldest kept is {compacted + 1})")


class RuntimeBackendError(ShoalError):
    """A runtime plugin failed."""


class RuntimeUnavailableError(RuntimeBackendError):
    """The runtime cannot work on this node."""


class TaskRejectedError(RuntimeBackendError):
    """The task can never start on this node as specified."""


class ExecUnsupportedError(RuntimeBackendError):
    """The task's runtime cannot run a command inside the task (``shoal exec``)."""


class NodeUnavailableError(ShoalError):
    """The node a call needs (to run a command in its task) is not connected now."""


class AuthError(ShoalError):
    """A join token or credential was refused."""


class DataKeyError(ShoalError):
    """The data key cannot be read, or does not decrypt what it is asked to."""


class BusyError(ShoalError):
    """The manager is too busy to serve the call now; the caller should retry after a backoff."""


class ApiError(ShoalError):
    """A remote call failed. ``code`` is a gRPC status code name, e.g. ``NOT_FOUND``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)
