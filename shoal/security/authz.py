"""Who may call what: per-RPC authorization from the caller's certificate.

Every listener but the join listener is mutual TLS, so every call arrives with a
client certificate that chains to the cluster CA (gRPC checked that during the
handshake). This module reads that certificate from the call's auth context
(parsed once per certificate and cached: ``x509_pem_cert`` carries it, the OU is
not exposed otherwise) and decides:

* ``Control``: user certificates; role ``admin`` may call everything, ``viewer``
  only the reads (``VIEWER_METHODS`` and any method whose name starts with one of
  ``READ_PREFIXES``) and what any user may do for itself (``SELF_METHODS``: a
  web UI login link for its own identity, audited like a write). A manager
  certificate may call Control only to forward a user's call (``x-shoal-caller``
  metadata, set by the follower that authorized it); the forwarded caller is
  then checked like a direct one.
* ``Dispatcher`` and ``Certificates``: node certificates (worker or manager); a
  request naming a node (``nodeId``) must name the certificate's own node.
* every call: the certificate's O is this cluster and its holder was not removed
  (``SecurityState.is_revoked``).

A refusal is ``PERMISSION_DENIED`` with a sentence saying who was refused what.
The authorized caller is available to handlers as ``current_caller()``; the
audit log (``shoal.security.audit``) records mutating Control calls with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc.aio
from cryptography import x509

from shoal.api.transport import ClientStream, Method, Payload, ServerStream, Unary
from shoal.errors import AuthError
from shoal.security.ca import NODE_ROLES, ROLE_ADMIN, ROLE_MANAGER, USER_ROLES, CertInfo, cert_info
from shoal.security.state import SecurityState

CALLER_METADATA = "x-shoal-caller"
VIEWER_METHODS = frozenset(
    {"Get", "Describe", "Logs", "Version", "ClusterStatus", "Events", "Endpoints"}
)
READ_PREFIXES = ("Get", "List", "Describe", "Watch", "Diff", "Events")
# Reads that still reveal credentials or identities: admin only.
ADMIN_READS = frozenset({"UserList", "Token"})
# Calls any user makes for itself, whatever its role (audited: they are not reads).
SELF_METHODS = frozenset({"UiLogin"})


@dataclass(frozen=True, slots=True)
class Caller:
    """An authorized caller: a node or user, and the manager that forwarded it, if any."""

    name: str
    role: str
    issued_at: datetime
    via: str | None = None
    # When the caller's certificate stops being valid (None: not known here, as for a
    # call a follower forwarded).
    not_after: datetime | None = None

    @property
    def kind(self) -> str:
        return "node" if self.role in NODE_ROLES else "user"

    def __str__(self) -> str:
        text = f"{self.kind} {self.name} ({self.role})"
        return f"{text} via manager {self.via}" if self.via else text

    def header(self) -> str:
        """``role:issued-at:name``: what a forwarding manager tells the leader."""
        return f"{self.role}:{int(self.issued_at.timestamp())}:{self.name}"


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    return _CALLER.get()


def forward_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata that lets the leader see who the forwarded call is from."""
    caller = _CALLER.get()
    return ((CALLER_METADATA, caller.header()),) if caller is not None else ()


def check_role(caller: Caller, method: str) -> None:
    """Refuse ``method`` to a caller whose role may not call it (gRPC and HTTP alike)."""
    if caller.role != ROLE_ADMIN and not is_read(method) and method not in SELF_METHODS:
        raise AuthError(
            f"user {caller.name} has role {caller.role}, which may only read; "
            f"Control.{method} needs role admin"
        )


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run handlers as ``caller`` (``current_caller()``, ``forward_metadata()``): what a
    listener that authenticates its callers another way (the web UI's sessions) needs."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def is_read(method: str) -> bool:
    if method in ADMIN_READS:
        return False
    return method in VIEWER_METHODS or method.startswith(READ_PREFIXES)


class PeerContext(Protocol):
    """What the checks read of a call: its TLS auth context (grpc and grpc.aio alike)."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


class PeerCache:
    """Parsed client certificates, by their PEM bytes (a bounded cache)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._cache: dict[bytes, CertInfo] = {}

    def info(self, context: PeerContext) -> CertInfo:
        auth = context.auth_context() or {}
        pem = next(iter(auth.get("x509_pem_cert") or ()), None)
        if pem is None:
            raise AuthError("this call carries no client certificate")
        info = self._cache.get(pem)
        if info is None:
            info = cert_info(x509.load_pem_x509_certificate(pem))
            if len(self._cache) >= self.size:
                self._cache.pop(next(iter(self._cache)), None)
            self._cache[pem] = info
        return info


class Authorizer:
    """Wraps a service's methods with the checks in the module docstring."""

    def __init__(
        self,
        cluster_id: str,
        state: SecurityState,
        denied: Callable[[str, str, Payload | None, CertInfo | None], None] | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.state = state
        self.peers = PeerCache()
        # Told of every refused mutating Control call: (method, reason, request, and
        # the refused certificate when the call carried one).
        self.denied = denied

    def _holder(self, context: PeerContext) -> CertInfo:
        info = self.peers.info(context)
        if info.cluster_id != self.cluster_id:
            raise AuthError(f"certificate of {info.common_name} is for another cluster")
        if self.state.is_revoked(info.kind, info.common_name, info.issued_at):
            raise AuthError(
                f"the certificate of {info.kind} {info.common_name} was revoked "
                f"({'node removed' if info.kind == 'node' else 'user removed'})"
            )
        return info

    def control_caller(self, method: str, context: grpc.aio.ServicerContext) -> Caller:
        info = self._holder(context)
        if info.role == ROLE_MANAGER:
            forwarded = dict(context.invocation_metadata() or ()).get(CALLER_METADATA)
            if not forwarded:
                raise AuthError(
                    f"node certificate of {info.common_name} cannot call Control.{method}: "
                    "the Control API wants a user certificate"
                )
            role, _, rest = str(forwarded).partition(":")
            stamp, _, name = rest.partition(":")
            if role not in USER_ROLES or not name or not stamp.isdigit():
                raise AuthError(f"malformed {CALLER_METADATA} metadata from {info.common_name}")
            issued = datetime.fromtimestamp(int(stamp), UTC)
            if self.state.is_revoked("user", name, issued):
                raise AuthError(f"the certificate of user {name} was revoked (user removed)")
            caller = Caller(name, role, issued, via=info.common_name)
        elif info.role in USER_ROLES:
            caller = Caller(info.common_name, info.role, info.issued_at, not_after=info.not_after)
        else:
            raise AuthError(
                f"{info.role} certificate of node {info.common_name} cannot call "
                f"Control.{method}: the Control API wants a user certificate"
            )
        check_role(caller, method)
        return caller

    def node_caller(
        self, service: str, method: str, request: Payload | None, context: PeerContext
    ) -> Caller:
        info = self._holder(context)
        if info.role not in NODE_ROLES:
            raise AuthError(
                f"user {info.common_name} cannot call {service}.{method}: it wants a node "
                "certificate"
            )
        if request is not None and "nodeId" in request:
            claimed = request.get("nodeId")
            if claimed != info.common_name:
                raise AuthError(
                    f"node {info.common_name} cannot speak for node {claimed!r}: "
                    "the certificate names another node"
                )
        return Caller(info.common_name, info.role, info.issued_at)

    # ----------------------------------------------------------- wrapping

    def control(self, methods: Mapping[str, Method]) -> dict[str, Method]:
        def check_for(name: str) -> Check:
            def check(context: grpc.aio.ServicerContext, request: Payload | None) -> Caller:
                try:
                    return self.control_caller(name, context)
                except AuthError as exc:
                    if self.denied is not None and not is_read(name):
                        try:
                            holder: CertInfo | None = self.peers.info(context)
                        except (AuthError, ValueError):
                            holder = None
                        self.denied(name, str(exc), request, holder)
                    raise

            return check

        return {name: _guard(method, check_for(name)) for name, method in methods.items()}

    def nodes(self, service: str, methods: Mapping[str, Method]) -> dict[str, Method]:
        def check_for(name: str) -> Check:
            return lambda context, request: self.node_caller(service, name, request, context)

        return {name: _guard(method, check_for(name)) for name, method in methods.items()}


Check = Callable[[grpc.aio.ServicerContext, Payload | None], Caller]


def _guard(method: Method, check: Check) -> Method:
    """``method`` preceded by ``check``, with the caller set for the handler."""
    if isinstance(method, Unary):
        unary = method.handler

        async def unary_call(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            token = _CALLER.set(check(context, request))
            try:
                return await unary(request, context)
            finally:
                _CALLER.reset(token)

        return Unary(unary_call)
    if isinstance(method, ServerStream):
        streaming = method.handler

        async def stream_call(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            _CALLER.set(check(context, request))  # each call runs in a context of its own
            async for item in streaming(request, context):
                yield item

        return dataclasses.replace(method, handler=stream_call)
    client_streaming = method.handler

    async def client_stream_call(requests: AsyncIterator[Payload], context: Any) -> Payload:
        _CALLER.set(check(context, None))
        return await client_streaming(requests, context)

    return ClientStream(client_stream_call)
