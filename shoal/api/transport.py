"""JSON over gRPC: the wire format of the Control and Dispatcher services.

The models are the single source of truth (DESIGN.md), so payloads are their
JSON form instead of a second schema in protobuf. gRPC still does what it is
good at (HTTP/2 streams, deadlines, status codes, keepalive); each method is a
generic handler whose (de)serializers are ``json``.

Errors cross the wire as gRPC status codes: ``ShoalError`` subclasses are mapped
to the most specific code on the server, and back to ``ApiError`` (carrying the
code name) on the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import orjson

from shoal.errors import (
    ApiError,
    AuthError,
    BusyError,
    ConflictError,
    NotFoundError,
    ShoalError,
    SpecError,
    StoreUnavailableError,
)

Payload = dict[str, Any]
UnaryHandler = Callable[[Payload, grpc.aio.ServicerContext], Awaitable[Payload]]
StreamHandler = Callable[[Payload, grpc.aio.ServicerContext], AsyncIterator[Payload]]
ClientStreamHandler = Callable[
    [AsyncIterator[Payload], grpc.aio.ServicerContext], Awaitable[Payload]
]

# Messages of a few MiB are legitimate (a full assignment set for a busy node).
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    # One connection per channel: gRPC otherwise shares connections between
    # channels to the same target, and a process hosting many agents
    # (--sim-nodes) would squeeze every session through one HTTP/2 connection.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


# orjson, not the standard library's json: a thousand agents' assignments and
# status batches are encoded and decoded on the manager's one event loop, and
# orjson does that several times faster (about 2 µs instead of 14 µs per task).
def encode(payload: Payload) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


def decode(data: bytes) -> Payload:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")
    return value


@dataclass(frozen=True)
class Unary:
    handler: UnaryHandler


@dataclass(frozen=True)
class ServerStream:
    handler: StreamHandler


@dataclass(frozen=True)
class ClientStream:
    handler: ClientStreamHandler


Method = Unary | ServerStream | ClientStream


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (SpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.ABORTED),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (BusyError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (ShoalError, grpc.StatusCode.FAILED_PRECONDITION),
]


def status_for(exc: Exception) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code = status_for(exc)
    message = str(exc) if code != grpc.StatusCode.INTERNAL else f"internal error: {exc!r}"
    await context.abort(code, message)


def _wrap(method: Method) -> grpc.RpcMethodHandler:
    if isinstance(method, Unary):
        unary = method.handler

        async def unary_call(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            try:
                return await unary(request, context)
            except (ShoalError, ValueError) as exc:
                await _abort(context, exc)
                raise  # unreachable: abort raises

        return grpc.unary_unary_rpc_method_handler(
            unary_call, request_deserializer=decode, response_serializer=encode
        )
    if isinstance(method, ServerStream):
        streaming = method.handler

        async def stream_call(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            try:
                async for item in streaming(request, context):
                    yield item
            except (ShoalError, ValueError) as exc:
                await _abort(context, exc)

        return grpc.unary_stream_rpc_method_handler(
            stream_call, request_deserializer=decode, response_serializer=encode
        )
    client_streaming = method.handler

    async def client_stream_call(
        requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
    ) -> Payload:
        try:
            return await client_streaming(requests, context)
        except (ShoalError, ValueError) as exc:
            await _abort(context, exc)
            raise

    return grpc.stream_unary_rpc_method_handler(
        client_stream_call, request_deserializer=decode, response_serializer=encode
    )


def service_handler(service: str, methods: Mapping[str, Method]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service, {name: _wrap(method) for name, method in methods.items()}
    )


def map_rpc_error(exc: grpc.aio.AioRpcError) -> ApiError:
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"the shoal manager did not answer in time: {details}"
    return ApiError(code.name, details)


class Client:
    """A JSON-over-gRPC client for one service on one channel."""

    def __init__(self, channel: grpc.aio.Channel, service: str) -> None:
        self.channel = channel
        self.service = service

    def _path(self, method: str) -> str:
        return f"/{self.service}/{method}"

    async def call(self, method: str, request: Payload, timeout: float | None = 30.0) -> Payload:
        stub = self.channel.unary_unary(
            self._path(method), request_serializer=encode, response_deserializer=decode
        )
        try:
            return await stub(request, timeout=timeout)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc

    async def stream(
        self, method: str, request: Payload, timeout: float | None = None
    ) -> AsyncIterator[Payload]:
        stub = self.channel.unary_stream(
            self._path(method), request_serializer=encode, response_deserializer=decode
        )
        call = stub(request, timeout=timeout)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def client_stream(
        self, method: str, requests: AsyncIterator[Payload], timeout: float | None = None
    ) -> Payload:
        stub = self.channel.stream_unary(
            self._path(method), request_serializer=encode, response_deserializer=decode
        )
        try:
            return await stub(requests, timeout=timeout)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc


def open_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel to ``HOST:PORT`` (TLS arrives with the security issue)."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


CONTROL_SERVICE = "shoal.v1.Control"
DISPATCHER_SERVICE = "shoal.v1.Dispatcher"
DEFAULT_PORT = 7420
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
