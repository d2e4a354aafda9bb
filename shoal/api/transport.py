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

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import orjson

from shoal.api.wire import CONTROL_SERVICE as CONTROL_SERVICE
from shoal.api.wire import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from shoal.api.wire import DEFAULT_PORT as DEFAULT_PORT
from shoal.api.wire import DISPATCHER_SERVICE as DISPATCHER_SERVICE
from shoal.api.wire import MANAGER_NAME, MAX_MESSAGE
from shoal.api.wire import Payload as Payload
from shoal.api.wire import TlsCredentials as TlsCredentials
from shoal.errors import (
    ApiError,
    AuthError,
    BusyError,
    ConflictError,
    NodeUnavailableError,
    NotFoundError,
    ShoalError,
    SpecError,
    StoreUnavailableError,
)

UnaryHandler = Callable[[Payload, grpc.aio.ServicerContext], Awaitable[Payload]]
StreamHandler = Callable[[Payload, grpc.aio.ServicerContext], AsyncIterator[Payload]]
ClientStreamHandler = Callable[
    [AsyncIterator[Payload], grpc.aio.ServicerContext], Awaitable[Payload]
]

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
    if isinstance(payload, Encoded):
        return payload.data
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


class Encoded(dict[str, Any]):
    """A message encoded once, for sending to many streams: ``encode`` returns the bytes
    kept here instead of encoding it again (read it as the dict it is; do not modify)."""

    def __init__(self, message: Payload) -> None:
        super().__init__(message)
        self.data = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)


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
    """A stream of answers to one request. ``duplex``: the client may go on sending
    messages after its first one (the agent's heartbeats on its session); the
    handler reads them with ``read_more(context)``. A client that sends one
    message and half-closes (an older agent) is served the same way."""

    handler: StreamHandler
    duplex: bool = False


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
    (NodeUnavailableError, grpc.StatusCode.UNAVAILABLE),
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


# What one request may weigh, by method name (every service): above it the call is
# refused with RESOURCE_EXHAUSTED before it is decoded. The channel-wide
# MAX_MESSAGE only bounds what gRPC accepts at all.
DEFAULT_REQUEST_LIMIT = 1024 * 1024
REQUEST_LIMITS = {
    "Apply": 32 * 1024 * 1024,  # many services at once
    "UpdateTaskStatus": 16 * 1024 * 1024,  # a busy node's status batch
    "Session": 16 * 1024 * 1024,  # the same batches, sent on the session (each message)
    "PublishLogs": 8 * 1024 * 1024,  # one batch of up to 500 log lines
}
# Calls one connection may have in flight at once (streams included); a peer that
# opens more gets RESOURCE_EXHAUSTED instead of exhausting the manager.
MAX_CALLS_PER_PEER = 256


class Rejected(dict[str, Any]):
    """A request refused while decoding; the handler answers with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message


def request_decoder(method: str) -> Callable[[bytes], Payload]:
    """Decodes ``method``'s requests: over its size limit, not JSON or not an object
    gives a ``Rejected`` for the handler to answer with."""
    limit = REQUEST_LIMITS.get(method, DEFAULT_REQUEST_LIMIT)

    def decode_request(data: bytes) -> Payload:
        if len(data) > limit:
            return Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request of {len(data)} bytes is over {method}'s limit of {limit} bytes",
            )
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"request: not JSON ({exc})")
        if not isinstance(value, dict):
            return Rejected(grpc.StatusCode.INVALID_ARGUMENT, "request: must be a JSON object")
        return value

    return decode_request


def _malformed(exc: Exception) -> ValueError:
    """A handler tripped over the request's shape: say which field, as INVALID_ARGUMENT."""
    if isinstance(exc, KeyError):
        return ValueError(f"{exc.args[0] if exc.args else '?'}: required field is missing")
    return ValueError(f"malformed request: {exc}")


MALFORMED = (KeyError, TypeError, AttributeError, IndexError)


class _PeerCalls:
    """Calls in flight per connection (``context.peer()``)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def enter(self, peer: str) -> bool:
        count = self.counts.get(peer, 0)
        if count >= MAX_CALLS_PER_PEER:
            return False
        self.counts[peer] = count + 1
        return True

    def leave(self, peer: str) -> None:
        count = self.counts.get(peer, 1) - 1
        if count <= 0:
            self.counts.pop(peer, None)
        else:
            self.counts[peer] = count


_PEERS = _PeerCalls()


async def _admit(context: grpc.aio.ServicerContext, request: Payload | None) -> str:
    """Refuse a rejected request or a peer over its cap; else count the call in."""
    if isinstance(request, Rejected):
        await context.abort(request.code, request.message)
    peer = str(context.peer())
    if not _PEERS.enter(peer):
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many calls in flight on this connection (the limit is {MAX_CALLS_PER_PEER})",
        )
    return peer


def _wrap(name: str, method: Method) -> grpc.RpcMethodHandler:
    decode_request = request_decoder(name)
    if isinstance(method, Unary):
        unary = method.handler

        async def unary_call(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            peer = await _admit(context, request)
            try:
                return await unary(request, context)
            except (ShoalError, ValueError) as exc:
                await _abort(context, exc)
                raise  # unreachable: abort raises
            except MALFORMED as exc:
                await _abort(context, _malformed(exc))
                raise
            finally:
                _PEERS.leave(peer)

        return grpc.unary_unary_rpc_method_handler(
            unary_call, request_deserializer=decode_request, response_serializer=encode
        )
    if isinstance(method, ServerStream):
        streaming = method.handler

        async def stream_call(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            peer = await _admit(context, request)
            try:
                async for item in streaming(request, context):
                    yield item
            except (ShoalError, ValueError) as exc:
                await _abort(context, exc)
            except MALFORMED as exc:
                await _abort(context, _malformed(exc))
            finally:
                _PEERS.leave(peer)

        if not method.duplex:
            return grpc.unary_stream_rpc_method_handler(
                stream_call, request_deserializer=decode_request, response_serializer=encode
            )

        async def duplex_call(
            requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            first = await context.read()
            if first is grpc.aio.EOF:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "request: the stream sent no first message"
                )
            async for item in stream_call(first, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            duplex_call, request_deserializer=decode_request, response_serializer=encode
        )
    client_streaming = method.handler

    async def checked(requests: AsyncIterator[Payload]) -> AsyncIterator[Payload]:
        async for request in requests:
            if isinstance(request, Rejected):
                raise ValueError(request.message)
            yield request

    async def client_stream_call(
        requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
    ) -> Payload:
        peer = await _admit(context, None)
        try:
            return await client_streaming(checked(requests), context)
        except (ShoalError, ValueError) as exc:
            await _abort(context, exc)
            raise
        except MALFORMED as exc:
            await _abort(context, _malformed(exc))
            raise
        finally:
            _PEERS.leave(peer)

    return grpc.stream_unary_rpc_method_handler(
        client_stream_call, request_deserializer=decode_request, response_serializer=encode
    )


async def read_more(context: grpc.aio.ServicerContext) -> AsyncIterator[Payload]:
    """The messages a client sends after its first one on a ``duplex`` stream, until it
    half-closes (one refused while decoding comes as a ``Rejected``)."""
    while True:
        message = await context.read()
        if message is grpc.aio.EOF:
            return
        yield message


def service_handler(service: str, methods: Mapping[str, Method]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        service, {name: _wrap(name, method) for name, method in methods.items()}
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

    def duplex(self, method: str, request: Payload) -> Duplex:
        """A ``duplex`` stream opened with ``request``; more go out with ``send``."""
        stub = self.channel.stream_stream(
            self._path(method), request_serializer=encode, response_deserializer=decode
        )
        return Duplex(stub(), request)

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


class Duplex:
    """The client's end of a ``duplex`` stream: iterate it for the answers; ``send`` more
    messages (one at a time: gRPC allows one write in flight per call)."""

    def __init__(self, call: Any, first: Payload) -> None:
        self._call = call
        self._first = first
        self._writing = asyncio.Lock()

    async def send(self, message: Payload) -> None:
        async with self._writing:
            try:
                await self._call.write(message)
            except grpc.aio.AioRpcError as exc:
                raise map_rpc_error(exc) from exc
            except asyncio.InvalidStateError as exc:  # the call is over
                raise ApiError("CANCELLED", "the stream has ended") from exc

    async def __aiter__(self) -> AsyncIterator[Payload]:
        try:
            await self.send(self._first)
            async for item in self._call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc
        finally:
            self._call.cancel()


def open_channel(address: str, tls: TlsCredentials) -> grpc.aio.Channel:
    """A mutual-TLS channel to the manager at ``HOST:PORT`` (or a comma list of them)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )
    return grpc.aio.secure_channel(
        address,
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", MANAGER_NAME)],
    )


def server_credentials(current: Callable[[], TlsCredentials]) -> grpc.ServerCredentials:
    """Mutual TLS for a listener whose certificate ``current()`` may change (renewal):
    each new connection is served with the certificate current at its handshake."""

    def configuration(tls: TlsCredentials) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem
        )

    served = current()

    def fetch() -> Any:
        nonlocal served
        latest = current()
        if latest is served:
            return None  # unchanged
        served = latest
        return configuration(latest)

    return grpc.dynamic_ssl_server_credentials(
        configuration(served), fetch, require_client_authentication=True
    )
