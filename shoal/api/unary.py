"""Unary gRPC calls without grpcio: one HTTP/2 connection, blocking, for the CLI.

Every ``shoal`` command starts a fresh interpreter, and ``import grpc`` alone
(its core imports asyncio, ssl and concurrent.futures) costs more than the
whole command may take. A unary call needs little of gRPC: one HTTP/2 stream
carrying a 5-byte length prefix and the JSON message, answered by headers, the
reply and the ``grpc-status``/``grpc-message`` trailers. ``h2`` (python-hyper's
HTTP/2 state machine: framing, HPACK, flow control, settings, pings) does the
protocol; the standard library's ``socket`` and ``ssl`` do mutual TLS with the
same credentials, ALPN ``h2`` and server name (``MANAGER_NAME``) as the grpc
channel of ``shoal.api.transport.open_channel``.

What the CLI relies on is kept: deadlines go out as ``grpc-timeout`` and are
also enforced here; status codes come back as ``ApiError`` with the same
names and messages as ``transport.map_rpc_error`` gives for grpcio; a
connection that breaks during a call is UNAVAILABLE ("connection lost").
Streaming calls (``logs -f``, ``events -w``, ``exec``, …) stay on grpc.aio.

A ``UnaryConnection`` is not thread-safe and runs one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shoal.api.address import split_host_port
from shoal.api.wire import MANAGER_NAME, MAX_MESSAGE, TlsCredentials
from shoal.errors import ApiError

TYPE_CHECKING = False  # as shoal.cli.main: typing's import is not free
if TYPE_CHECKING:
    from collections.abc import Iterator

# gRPC's status codes by number (grpc/status.h); names as grpcio's StatusCode.
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# What the window is opened to, so a large reply streams without a WINDOW_UPDATE per 64 KiB.
WINDOW = 16 * 1024 * 1024
_READ = 256 * 1024
# Events that need no answer from us (h2 acknowledges settings and pings itself).
_HOUSEKEEPING = (
    h2.events.RemoteSettingsChanged,
    h2.events.SettingsAcknowledged,
    h2.events.WindowUpdated,
    h2.events.PingReceived,
    h2.events.PingAckReceived,
)
_ENDINGS = (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)


REFUSED = "connection refused, or the TLS handshake failed"


class ConnectError(Exception):
    """The manager at an address could not be reached; ``str()`` says why, as the
    grpc client's channel states did (``shoal.api.client.unreachable_message``)."""


class ConnectionLost(Exception):
    """The connection broke during a call: the call's outcome is unknown."""


def _memory_file(data: bytes) -> contextlib.AbstractContextManager[str]:
    """A path to ``data`` for ``ssl.load_cert_chain`` (which reads files only): an
    anonymous in-memory file where the kernel has them, so a key never touches disk."""

    @contextlib.contextmanager
    def opened() -> Iterator[str]:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("shoal-tls", os.MFD_CLOEXEC)
            try:
                os.write(fd, data)
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
                out.write(data)
            yield path

    return opened()


def tls_context(tls: TlsCredentials) -> ssl.SSLContext:
    """Mutual TLS as a client of the cluster: the CA verifies the manager, the
    certificate and key identify the caller. PEM that cannot be used is UNAUTHENTICATED,
    which the grpc.aio client checks first too (``shoal.api.client.open_control``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    what = "CA certificate"
    try:
        context.load_verify_locations(cadata=tls.ca_pem.decode())
        what = "certificate and key"
        with _memory_file(tls.cert_pem) as cert, _memory_file(tls.key_pem) as key:
            context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:  # ssl.SSLError included
        why = getattr(exc, "reason", None) or str(exc)
        raise ApiError(
            "UNAUTHENTICATED",
            f"these credentials' {what} cannot be used ({why}): check the bundle or "
            "context, or get new credentials (`shoal user add`)",
        ) from exc
    context.set_alpn_protocols(["h2"])
    return context


def grpc_timeout(seconds: float) -> str:
    """``seconds`` as a ``grpc-timeout`` header value (at most 8 digits and a unit)."""
    millis = max(1, int(seconds * 1000 + 0.999))
    if millis < 100_000_000:
        return f"{millis}m"
    return f"{min(int(seconds + 0.999), 99_999_999)}S"


def _percent_decoded(text: bytes) -> str:
    """A ``grpc-message`` value: percent-encoded UTF-8 (gRPC's HTTP/2 protocol spec)."""
    if b"%" not in text:
        return text.decode("utf-8", "replace")
    out = bytearray()
    index = 0
    while index < len(text):
        byte = text[index]
        if byte == 0x25 and index + 2 < len(text):  # '%'
            try:
                out.append(int(text[index + 1 : index + 3], 16))
                index += 3
                continue
            except ValueError:
                pass
        out.append(byte)
        index += 1
    return out.decode("utf-8", "replace")


def deadline_error() -> ApiError:
    # The words grpcio's client uses for a deadline it enforced, as map_rpc_error frames them.
    return ApiError(
        "DEADLINE_EXCEEDED", "the shoal manager did not answer in time: Deadline Exceeded"
    )


class UnaryConnection:
    """One mutual-TLS HTTP/2 connection to a manager, for unary gRPC calls."""

    def __init__(self, sock: ssl.SSLSocket, address: str) -> None:
        self.address = address
        self._sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        # Events read ahead (while handshaking or sending) for the reply to take.
        self._pending: list[h2.events.Event] = []

    @classmethod
    def open(cls, address: str, tls: ssl.SSLContext, timeout: float) -> UnaryConnection:
        """Connect, complete TLS and HTTP/2's settings exchange within ``timeout``;
        ``ConnectError`` says what failed."""
        try:
            host, port = split_host_port(address)
        except ValueError as exc:
            raise ConnectError(str(exc)) from exc
        deadline = time.monotonic() + timeout
        silent = f"no answer within {timeout:g}s: down, paused or unreachable"
        try:
            # Names as bytes: a str goes through the idna codec (~3 ms of import) on
            # its way to getaddrinfo, and so does the TLS server name below.
            name = host.encode() if host.isascii() else host
            raw = socket.create_connection((name, port), timeout=timeout)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectError(silent) from exc
        except OSError as exc:
            raise ConnectError(REFUSED) from exc
        connection = None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(max(deadline - time.monotonic(), 0.001))  # the TLS handshake's
            sock = tls.wrap_socket(raw, server_hostname=MANAGER_NAME.encode())
            connection = cls(sock, address)
            connection._handshake(deadline)
        except (OSError, ConnectionLost) as exc:  # ssl.SSLError and TimeoutError included
            raw.close()
            if connection is not None:
                connection.close()
            # With TLS 1.3 a client certificate the manager refuses shows only after the
            # handshake, when its settings should come: "the TLS handshake failed" still.
            raise ConnectError(silent if isinstance(exc, TimeoutError) else REFUSED) from exc
        return connection

    def _handshake(self, deadline: float) -> None:
        """Our preface and settings out, the server's settings in: only then is the
        manager known to answer (as a grpc channel is READY)."""
        if self._sock.selected_alpn_protocol() != "h2":
            raise ConnectionLost("the server did not agree to HTTP/2")
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(WINDOW)
        self._flush(deadline)
        while True:
            events = self._receive(deadline)
            settled = any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
            self._pending += [e for e in events if not isinstance(e, _HOUSEKEEPING)]
            if settled:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            self._h2.close_connection()
            self._sock.sendall(self._h2.data_to_send())
        self._sock.close()

    def _flush(self, deadline: float | None = None) -> None:
        """Send what h2 has queued, by ``deadline`` if given (else within the socket's
        timeout, which the last ``_receive`` set from its deadline)."""
        data = self._h2.data_to_send()
        if data:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
            try:
                self._sock.sendall(data)
            except TimeoutError:
                raise
            except OSError as exc:
                raise ConnectionLost(str(exc)) from exc

    def _receive(self, deadline: float) -> list[h2.events.Event]:
        """The events of the next bytes from the server (waiting until ``deadline``)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(_READ)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        if not data:
            raise ConnectionLost("the server closed the connection")
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise ConnectionLost(f"HTTP/2 protocol error: {exc}") from exc
        self._flush()  # settings acks, ping answers, window updates
        return events

    def call(self, path: str, message: bytes, timeout: float | None) -> bytes:
        """The reply to ``message`` from method ``path`` (``/service/Method``).

        Raises ``ApiError`` with the gRPC status the server sent (or
        DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED for a reply over ``MAX_MESSAGE``),
        ``ConnectionLost`` when the connection broke first.
        """
        if len(message) > MAX_MESSAGE:
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                f"Sent message larger than max ({len(message)} vs. {MAX_MESSAGE})",
            )
        deadline = time.monotonic() + (timeout if timeout is not None else 10 * 365 * 86400.0)
        stream = self._h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", path.encode()),
            (b":authority", MANAGER_NAME.encode()),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"shoal-cli"),
        ]
        if timeout is not None:
            headers.append((b"grpc-timeout", grpc_timeout(timeout).encode()))
        try:
            self._h2.send_headers(stream, headers)
            self._flush(deadline)
            self._send_body(stream, b"\0" + len(message).to_bytes(4, "big") + message, deadline)
            return self._reply(stream, deadline)
        except h2.exceptions.ProtocolError as exc:  # the connection ended before (GOAWAY)
            raise ConnectionLost(f"the connection is closed: {exc}") from exc
        except TimeoutError:
            with contextlib.suppress(OSError, ConnectionLost, h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            raise deadline_error() from None

    def _send_body(self, stream: int, body: bytes, deadline: float) -> None:
        """``body`` as DATA frames, as fast as the server's flow-control windows allow."""
        view = memoryview(body)
        while True:
            room = min(self._h2.local_flow_control_window(stream), self._h2.max_outbound_frame_size)
            if room >= len(view):
                self._h2.send_data(stream, bytes(view), end_stream=True)
                self._flush(deadline)
                return
            if room > 0:
                self._h2.send_data(stream, bytes(view[:room]))
                self._flush(deadline)
                view = view[room:]
                continue
            # No room: wait for a window update. A server that answers before the
            # request is all sent (an error, say) ends the sending; _reply reads it.
            events = self._receive(deadline)
            self._pending += [e for e in events if not isinstance(e, _HOUSEKEEPING)]
            if any(_ends(e, stream) for e in events):
                return

    def _reply(self, stream: int, deadline: float) -> bytes:
        body = bytearray()
        metadata: dict[bytes, bytes] = {}
        while True:
            events, self._pending = self._pending or self._receive(deadline), []
            for event in events:
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    if event.stream_id == stream:
                        metadata.update((bytes(k), bytes(v)) for k, v in event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id == stream:
                        body += event.data
                        if len(body) > MAX_MESSAGE + 5:
                            raise _too_large(body)
                    self._h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise _reset_error(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    # Even a graceful GOAWAY (a manager stopping) ends the connection for
                    # h2, which takes no frame after it: this call's outcome is unknown.
                    raise ConnectionLost("the server ended the connection (GOAWAY)")
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    self._flush()
                    return _message(body, metadata)
            self._flush()


def _ends(event: h2.events.Event, stream: int) -> bool:
    """Whether ``event`` ends ``stream`` (or the whole connection)."""
    return isinstance(event, _ENDINGS) and getattr(event, "stream_id", stream) == stream


def _too_large(body: bytearray) -> ApiError:
    length = int.from_bytes(body[1:5], "big")
    return ApiError(
        "RESOURCE_EXHAUSTED", f"Received message larger than max ({length} vs. {MAX_MESSAGE})"
    )


def _reset_error(code: int) -> ApiError:
    # As grpc maps an RST_STREAM without a status (grpc's http2 errors table).
    if code == h2.errors.ErrorCodes.REFUSED_STREAM:
        return ApiError("UNAVAILABLE", "the manager refused the stream")
    if code == h2.errors.ErrorCodes.CANCEL:
        return ApiError("CANCELLED", "the call was cancelled")
    return ApiError("INTERNAL", f"the stream was reset (HTTP/2 error {code})")


def _message(body: bytearray, metadata: dict[bytes, bytes]) -> bytes:
    """The one message of a finished call, or its status as ``ApiError``."""
    status = metadata.get(b"grpc-status")
    if status is None:
        http = metadata.get(b":status", b"?").decode()
        raise ApiError("UNKNOWN", f"the answer carried no gRPC status (HTTP status {http})")
    code = int(status) if status.isdigit() else 2
    if code != 0:
        name = CODE_NAMES[code] if code < len(CODE_NAMES) else "UNKNOWN"
        details = _percent_decoded(metadata.get(b"grpc-message", b"")) or name
        if name == "DEADLINE_EXCEEDED":
            details = f"the shoal manager did not answer in time: {details}"
        raise ApiError(name, details)
    if len(body) < 5:
        raise ApiError("INTERNAL", "the answer carried no message")
    if body[0] != 0:
        raise ApiError("INTERNAL", "the answer is compressed, which this client did not ask for")
    length = int.from_bytes(body[1:5], "big")
    if length > MAX_MESSAGE:
        raise _too_large(body)
    return bytes(body[5 : 5 + length])
