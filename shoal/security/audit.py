"""The audit log: every mutating Control call, who made it, and how it ended.

One JSON object per line in ``STATE_DIR/audit.log`` (mode 0600) of the manager
that received the call: time, caller (user, role, and the manager that forwarded
it, if any), method, the request's names (never its payload: specs may carry
environment values), and the outcome (``OK`` or the gRPC code). A call forwarded
by a follower appears in both managers' logs, the leader's naming the follower.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc.aio

from shoal.api.transport import ClientStream, Method, Payload, ServerStream, Unary, status_for
from shoal.security.authz import current_caller, is_read
from shoal.security.ca import CertInfo

AUDIT_FILE = "audit.log"


def _names(request: Payload) -> dict[str, Any]:
    """The objects a request names, for the log (not its contents)."""
    summary: dict[str, Any] = {}
    for key in (
        *("name", "names", "kind", "role", "rotate", "dryRun", "service", "action"),
        *("toRevision", "set", "prune", "suspend", "force"),
    ):
        if key in request and isinstance(request[key], str | bool | list | int):
            value = request[key]
            summary[key] = value[:50] if isinstance(value, list) else value
    for key in ("services", "documents", "configs"):
        documents = request.get(key)
        if isinstance(documents, list):
            summary[key] = [_document_name(doc) for doc in documents[:50]]
    replicas = request.get("replicas")
    if isinstance(replicas, dict):
        summary["replicas"] = {str(k): v for k, v in list(replicas.items())[:50]}
    return summary


def _document_name(doc: object) -> str:
    """``kind/name`` of one document in a request (``Service`` when it names no kind)."""
    if not isinstance(doc, dict):
        return "?"
    metadata = doc.get("metadata")
    name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
    return f"{doc.get('kind') or 'Service'}/{name}"


class AuditLog:
    """Appends audit records to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", buffering=1)

    def record(
        self,
        method: str,
        request: Payload | None,
        outcome: str,
        reason: str | None = None,
        refused: CertInfo | None = None,
    ) -> None:
        caller = current_caller()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(),
            "user": caller.name if caller else refused.common_name if refused else None,
            "role": caller.role if caller else refused.role if refused else None,
            "via": caller.via if caller else None,
            "method": method,
            "request": _names(request or {}),
            "outcome": outcome,
        }
        if reason:
            entry["reason"] = reason
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def denied(
        self, method: str, reason: str, request: Payload | None, refused: CertInfo | None
    ) -> None:
        """A call the authorizer refused: ``refused`` is the certificate it came with."""
        self.record(method, request, "PERMISSION_DENIED", reason, refused)

    def close(self) -> None:
        self._file.close()

    def wrap(self, methods: Mapping[str, Method]) -> dict[str, Method]:
        """Audit the mutating methods among ``methods`` (everything that is not a read)."""
        wrapped: dict[str, Method] = {}
        for name, method in methods.items():
            if is_read(name) or isinstance(method, ClientStream):
                wrapped[name] = method
            elif isinstance(method, ServerStream):
                wrapped[name] = ServerStream(self._audited_stream(name, method))
            else:
                wrapped[name] = Unary(self._audited(name, method))
        return wrapped

    def _audited_stream(self, name: str, method: ServerStream) -> Any:
        """A mutating stream (``Exec``) is recorded when it ends, with how it ended."""

        async def handler(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            try:
                async for item in method.handler(request, context):
                    yield item
            except Exception as exc:
                self.record(name, request, status_for(exc).name)
                raise
            except BaseException:  # the caller went away (cancelled)
                self.record(name, request, "CANCELLED")
                raise
            self.record(name, request, "OK")

        return handler

    def _audited(self, name: str, method: Unary) -> Any:
        async def handler(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            try:
                reply = await method.handler(request, context)
            except Exception as exc:
                self.record(name, request, status_for(exc).name)
                raise
            self.record(name, request, "OK")
            return reply

        return handler
