"""Control API methods called from HTTP: the call context, and errors as HTTP answers.

The HTTP API calls the very methods the gRPC listener serves, past the same
audit log, admission gate and leader routing (``ManagerSecurity.audited``), so
a follower answers reads from its informer and forwards writes to the leader
exactly as it does for the CLI. What gRPC gives those methods as their
``ServicerContext`` is here ``CallContext``: no metadata (a call from HTTP is
never a forwarded one), no deadline, and ``abort`` raises the ``ApiError`` the
leader answered with.

Errors become the status a user of HTTP expects and a JSON body
``{"error": {"code", "message", "field"}}``: ``code`` is the gRPC status name
the Control API would have answered, ``field`` the request field at fault when
the message names one. Nothing unexpected leaves as a traceback.
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from pydantic import ValidationError

from shoal.api.transport import MALFORMED, status_for
from shoal.errors import ApiError
from shoal.http.sessions import SignInError

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# "replicas: must be ..." / "spec.template.image: ..." : the field a message starts with.
_FIELD = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*): ")


class CallContext:
    """What the Control handlers read of a gRPC call, for a call that came over HTTP."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return f"http:{self._peer}"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise ApiError(code.name, details)


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for an error a handler raised."""
    field: str | None = None
    if isinstance(exc, SignInError):
        code, message = "UNAUTHENTICATED", str(exc)
    elif isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        code, message = "INVALID_ARGUMENT", f"{field}: {first['msg']}" if field else first["msg"]
    elif isinstance(exc, ApiError):
        code, message = exc.code, exc.message
    elif isinstance(exc, MALFORMED):
        detail = exc.args[0] if exc.args else "?"
        code = "INVALID_ARGUMENT"
        message = (
            f"{detail}: required field is missing"
            if isinstance(exc, KeyError)
            else f"malformed request: {exc}"
        )
    else:
        code = status_for(exc).name
        message = str(exc) if code != "INTERNAL" else "internal error (see the manager's log)"
    if field is None:
        match = _FIELD.match(message)
        field = match.group(1) if match else None
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return HTTP_STATUS.get(code, 500), {"error": body}
