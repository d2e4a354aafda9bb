"""Heartbeats on threads of their own, so that no reconcile can hold them up.

The manager's gRPC services run on its event loop, and so do its
reconcilers: a pass that holds the loop for two seconds used to hold every
heartbeat for two seconds too, and a manager under load then declared its
live nodes down (the metastable collapse of issue 8). Heartbeats are the one
call whose timing is its meaning, so they get a listener of their own: a
small synchronous gRPC server with its own thread pool, on a port of its own
(``--heartbeat-listen``, default the ``--listen`` host and any free port). Its
threads need only the GIL, which a pass on the loop gives up every few
milliseconds, so a heartbeat is recorded within tens of milliseconds whatever
the loop is doing.

The session's first message names this address (``heartbeatAddress``); an
agent sends its heartbeats there and falls back to the session's own address
if it cannot reach it. The handler touches only memory that is safe to read
from another thread under the GIL (the session table, the informer's node
entries, the heartbeat tracker); closing a session is handed to the loop.
The leader's Dispatcher ``Heartbeat`` method stays, with the same answers.

The listener is mutual TLS with the manager's certificate, like the main
one, and a heartbeat is checked as the Dispatcher's are
(``shoal.security.authz.Authorizer.node_caller``): a node certificate of this
cluster, not revoked, whose CN is the ``nodeId`` the heartbeat speaks for.
Requests are bounded and malformed ones answered ``INVALID_ARGUMENT`` naming
the field, as on the main listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc

from shoal.api.transport import (
    DISPATCHER_SERVICE,
    SERVER_OPTIONS,
    Payload,
    Rejected,
    encode,
    request_decoder,
)
from shoal.errors import AuthError
from shoal.manager.dispatcher import Dispatcher
from shoal.models import NodeState

# Raises AuthError unless the call's certificate may send this heartbeat.
Check = Callable[[Payload, grpc.ServicerContext], object]

THREADS = 4


class HeartbeatListener:
    """The listener described above; ``start()`` returns the bound port."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        managers: Callable[[], list[str]],
        credentials: grpc.ServerCredentials,
        check: Check,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
    ) -> None:
        self.dispatcher = dispatcher
        self.interceptors = list(interceptors)  # e.g. gRPC call metrics
        self.managers = managers
        self.credentials = credentials
        self.check = check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.Server | None = None

    def start(self, listen: str) -> int:
        self._loop = asyncio.get_running_loop()
        server = grpc.server(
            ThreadPoolExecutor(THREADS, thread_name_prefix="heartbeats"),
            options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)],
            interceptors=self.interceptors,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    DISPATCHER_SERVICE,
                    {
                        "Heartbeat": grpc.unary_unary_rpc_method_handler(
                            self._beat,
                            request_deserializer=request_decoder("Heartbeat"),
                            response_serializer=encode,
                        )
                    },
                ),
            )
        )
        try:
            port = int(server.add_secure_port(listen, self.credentials))
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen for heartbeats on {listen}: the address is in use"
            ) from exc
        server.start()
        self._server = server
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)
            self._server = None

    def _beat(self, request: Payload, context: grpc.ServicerContext) -> Payload:
        """Runs on a listener thread: read-only but for the tracker's one dict entry."""
        if isinstance(request, Rejected):
            _abort(context, request.code, request.message)
        try:
            self.check(request, context)
        except AuthError as exc:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        node_id = request.get("nodeId")
        if not isinstance(node_id, str) or not node_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "nodeId: required, a string")
        session = self.dispatcher.sessions.get(node_id)
        if session is None or session.id != request.get("sessionId") or session.closed:
            _refuse(context, f"no session {request.get('sessionId')} for node {node_id}")
        entry = self.dispatcher.informer.nodes.get(node_id)
        if entry is None or entry.obj.status.state != NodeState.READY:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(session.close)
            _refuse(context, f"node {node_id} was marked down; register again")
        self.dispatcher.heartbeats.beat(node_id)
        return {"heartbeatPeriod": self.dispatcher.heartbeat_period, "managers": self.managers()}


def _refuse(context: grpc.ServicerContext, message: str) -> NoReturn:
    """The session is unknown or over: the agent must register again."""
    _abort(context, grpc.StatusCode.FAILED_PRECONDITION, message)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")
