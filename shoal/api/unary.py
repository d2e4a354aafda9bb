"""Unary gRPC calls without grpcio: one HTTP/2 connection, blocking, for the CLI.

Every ``shoal`` command starts a fresh interpreter, and ``import grpc`` alone
(its core imports asyncio, ssl and concurrent.futures) costs more than the
whole command may take. A unary call needs little of gRPC: one HTTP/2 stream
carrying a 5-byte length prefix and the JSON message, answered by headers, the
reply and the ``grpc-status``/``grpc-message`` trailers. This connection keeps
HTTP/2's state for that (settings, flow-control windows, pings, the end of a
stream or of the connection) on the frames and HPACK of ``shoal.api.http2``;
the standard library's ``socket`` and ``ssl`` do mutual TLS with the same
credentials, ALPN ``h2`` and server name (``MANAGER_NAME``) as the grpc channel
of ``shoal.api.transport.open_channel``.

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

from shoal.api import http2
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
        self._frames = http2.FrameReader()
        self._decoder = http2.HeaderDecoder()
        # Frames read ahead (while handshaking or sending) for the reply to take.
        self._pending: list[http2.Frame] = []
        self._next_stream = 1
        # What we may send: the connection's window, a new stream's, the largest frame.
        self._window = http2.DEFAULT_WINDOW
        self._stream_window = http2.DEFAULT_WINDOW
        self._initial_window = http2.DEFAULT_WINDOW
        self._max_frame = http2.DEFAULT_FRAME
        self._stream = 0  # the stream of the call in flight
        # What we received and have not yet opened the windows again for.
        self._unacknowledged = 0
        self._stream_unacknowledged = 0
        # A header block in parts (HEADERS, then CONTINUATION): its stream, flags, bytes.
        self._block: tuple[int, int, bytearray] | None = None
        self._ended: str | None = None  # why the connection can carry no more calls

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
        self._send(
            http2.PREFACE
            + http2.settings_frame(
                {
                    http2.ENABLE_PUSH: 0,
                    http2.INITIAL_WINDOW_SIZE: WINDOW,
                    http2.MAX_HEADER_LIST_SIZE: 64 * 1024,
                }
            )
            + http2.window_update(0, WINDOW - http2.DEFAULT_WINDOW),
            deadline,
        )
        while True:
            frames = self._receive(deadline)
            self._pending += frames
            if any(f[0] == http2.SETTINGS and not f[1] & http2.ACK for f in frames):
                self._pending = [f for f in self._pending if not self._housekeeping(f)]
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(http2.frame(http2.GOAWAY, 0, 0, bytes(8)))
        self._sock.close()

    def _send(self, data: bytes, deadline: float | None = None) -> None:
        """Send ``data``, by ``deadline`` if given (else within the socket's timeout,
        which the last ``_receive`` set from its deadline)."""
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

    def _receive(self, deadline: float) -> list[http2.Frame]:
        """The frames of the next bytes from the server (waiting until ``deadline``)."""
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
        return self._frames.feed(data)

    def _housekeeping(self, frame: http2.Frame) -> bool:
        """Answer what concerns the connection (settings, pings, windows); False for
        the frames of a call. A GOAWAY ends the connection for every later call."""
        kind, flags, stream, payload = frame
        if kind == http2.SETTINGS:
            if not flags & http2.ACK:
                self._apply_settings(http2.parse_settings(payload))
                self._send(http2.frame(http2.SETTINGS, http2.ACK, 0))
            return True
        if kind == http2.PING:
            if not flags & http2.ACK:
                self._send(http2.frame(http2.PING, http2.ACK, 0, payload))
            return True
        if kind == http2.WINDOW_UPDATE:
            if len(payload) != 4:
                raise ConnectionLost("HTTP/2 protocol error: a WINDOW_UPDATE of a wrong length")
            increment = int.from_bytes(payload, "big") & http2.MAX_WINDOW
            if stream == 0:
                self._window += increment
            elif stream == self._stream:
                self._stream_window += increment
            return True
        if kind == http2.GOAWAY:
            # Even a graceful GOAWAY (a manager stopping) takes no new stream, and the
            # call in flight may or may not be answered: its outcome is unknown.
            self._ended = "the server ended the connection (GOAWAY)"
            raise ConnectionLost(self._ended)
        if kind == http2.PUSH_PROMISE:
            raise ConnectionLost("HTTP/2 protocol error: a push, which this client refused")
        return kind not in (http2.DATA, http2.HEADERS, http2.CONTINUATION, http2.RST_STREAM)

    def _apply_settings(self, values: dict[int, int]) -> None:
        if http2.INITIAL_WINDOW_SIZE in values:
            size = values[http2.INITIAL_WINDOW_SIZE]
            if size > http2.MAX_WINDOW:
                raise ConnectionLost("HTTP/2 protocol error: a window above 2^31-1")
            self._stream_window += size - self._initial_window
            self._initial_window = size
        if http2.MAX_FRAME_SIZE in values:
            self._max_frame = min(max(values[http2.MAX_FRAME_SIZE], http2.DEFAULT_FRAME), 1 << 24)

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
        if self._ended is not None:
            raise ConnectionLost(f"the connection is closed: {self._ended}")
        deadline = time.monotonic() + (timeout if timeout is not None else 10 * 365 * 86400.0)
        stream = self._stream = self._next_stream
        self._next_stream += 2
        self._stream_window = self._initial_window
        self._stream_unacknowledged = 0
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
            self._send_headers(stream, http2.encode_headers(headers), deadline)
            self._send_body(stream, b"\0" + len(message).to_bytes(4, "big") + message, deadline)
            return self._reply(stream, deadline)
        except http2.ProtocolError as exc:
            self._ended = f"HTTP/2 protocol error: {exc}"
            raise ConnectionLost(self._ended) from exc
        except TimeoutError:
            with contextlib.suppress(OSError, ConnectionLost):
                cancel = http2.CANCEL.to_bytes(4, "big")
                self._send(http2.frame(http2.RST_STREAM, 0, stream, cancel))
            raise deadline_error() from None

    def _send_headers(self, stream: int, block: bytes, deadline: float) -> None:
        parts = [block[at : at + self._max_frame] for at in range(0, len(block), self._max_frame)]
        frames = [
            http2.frame(
                http2.HEADERS if n == 0 else http2.CONTINUATION,
                http2.END_HEADERS if n == len(parts) - 1 else 0,
                stream,
                part,
            )
            for n, part in enumerate(parts or [b""])
        ]
        self._send(b"".join(frames), deadline)

    def _send_body(self, stream: int, body: bytes, deadline: float) -> None:
        """``body`` as DATA frames, as fast as the server's flow-control windows allow."""
        view = memoryview(body)
        while True:
            room = min(self._window, self._stream_window, self._max_frame)
            if room >= len(view):
                self._window -= len(view)
                self._stream_window -= len(view)
                self._send(http2.frame(http2.DATA, http2.END_STREAM, stream, bytes(view)), deadline)
                return
            if room > 0:
                self._window -= room
                self._stream_window -= room
                self._send(http2.frame(http2.DATA, 0, stream, bytes(view[:room])), deadline)
                view = view[room:]
                continue
            # No room: wait for a window update. A server that answers before the
            # request is all sent (an error, say) ends the sending; _reply reads it.
            frames = self._receive(deadline)
            kept = [f for f in frames if not self._housekeeping(f)]
            self._pending += kept
            if any(_ends(f, stream) for f in kept):
                return

    def _reply(self, stream: int, deadline: float) -> bytes:
        body = bytearray()
        metadata: dict[bytes, bytes] = {}
        while True:
            frames, self._pending = self._pending or self._receive(deadline), []
            for frame in frames:
                if self._housekeeping(frame):
                    continue
                kind, flags, on, payload = frame
                if self._block is not None and kind != http2.CONTINUATION:
                    raise http2.ProtocolError("a header block interrupted")
                if kind == http2.DATA:
                    self._received(len(payload), on == stream and not flags & http2.END_STREAM)
                    if on != stream:
                        continue
                    body += http2.unpadded(flags, payload)
                    if len(body) > MAX_MESSAGE + 5:
                        raise _too_large(body)
                    if flags & http2.END_STREAM:
                        return _message(body, metadata)
                elif kind in (http2.HEADERS, http2.CONTINUATION):
                    if kind == http2.HEADERS:
                        fragment = http2.unpadded(flags, payload, priority=True)
                        self._block = (on, flags, bytearray(fragment))
                    elif self._block is None or self._block[0] != on:
                        raise http2.ProtocolError("a CONTINUATION of no header block")
                    else:
                        self._block[2].extend(payload)
                    if not flags & http2.END_HEADERS:
                        continue
                    on, first, block = self._block
                    self._block = None
                    # Every block is decoded, an abandoned stream's too: they share a table.
                    headers = self._decoder.decode(bytes(block))
                    if on == stream:
                        metadata.update(headers)
                        if first & http2.END_STREAM:
                            return _message(body, metadata)
                elif kind == http2.RST_STREAM and on == stream:
                    raise _reset_error(int.from_bytes(payload[:4], "big"))

    def _received(self, length: int, stream_open: bool) -> None:
        """Open the windows again for ``length`` bytes received, half a window at a time."""
        self._unacknowledged += length
        updates = b""
        if self._unacknowledged >= WINDOW // 2:
            updates += http2.window_update(0, self._unacknowledged)
            self._unacknowledged = 0
        if stream_open:
            self._stream_unacknowledged += length
            if self._stream_unacknowledged >= WINDOW // 2:
                updates += http2.window_update(self._stream, self._stream_unacknowledged)
                self._stream_unacknowledged = 0
        if updates:
            self._send(updates)


def _ends(frame: http2.Frame, stream: int) -> bool:
    """Whether ``frame`` ends ``stream``."""
    kind, flags, on, _ = frame
    if on != stream:
        return False
    ended = kind in (http2.DATA, http2.HEADERS) and bool(flags & http2.END_STREAM)
    return ended or kind == http2.RST_STREAM


def _too_large(body: bytearray) -> ApiError:
    length = int.from_bytes(body[1:5], "big")
    return ApiError(
        "RESOURCE_EXHAUSTED", f"Received message larger than max ({length} vs. {MAX_MESSAGE})"
    )


def _reset_error(code: int) -> ApiError:
    # As grpc maps an RST_STREAM without a status (grpc's http2 errors table).
    if code == http2.REFUSED_STREAM:
        return ApiError("UNAVAILABLE", "the manager refused the stream")
    if code == http2.CANCEL:
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
