"""The CLI's unary client (``shoal.api.unary``) against a real grpc.aio server.

The server is shoal's own (``transport.service_handler`` with mutual TLS from
``transport.server_credentials``, certificates from the cluster CA), run on an
event loop in a thread of its own while the test calls it the blocking way the
CLI does. What a user sees is checked: the answer, the error code and message,
a deadline, which manager of a list answered, a certificate refused.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest

from shoal.api import client as api_client
from shoal.api.client import complete, connect
from shoal.api.transport import (
    CONTROL_SERVICE,
    Payload,
    Unary,
    server_credentials,
    service_handler,
)
from shoal.api.unary import REFUSED, ConnectError, ConnectionLost, UnaryConnection, tls_context
from shoal.errors import ApiError, NotFoundError
from shoal.security.ca import CertificateAuthority
from shoal.security.credentials import TlsIdentity

# A reply and a request bigger than HTTP/2's default 64 KiB windows, and than one frame.
LARGE = 20 * 1024 * 1024


async def get(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
    kind = request.get("kind")
    if kind == "nope":
        raise NotFoundError("service 'nope' not found")
    if kind == "odd":
        raise ValueError("replicas: 100% wrong, ünïcode too")
    if kind == "slow":
        await asyncio.sleep(5)
    if kind == "linger":
        await asyncio.sleep(1)
    if kind == "large":
        return {"items": [{"name": "x" * 1000, "n": n} for n in range(LARGE // 1000)]}
    return {"items": [{"kind": kind, "echo": len(request.get("pad", ""))}]}


class Server:
    """A grpc.aio server of the Control service name on its own loop and thread."""

    def __init__(self, identity: TlsIdentity) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._identity = identity
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            (service_handler(CONTROL_SERVICE, {"Get": Unary(get)}),)
        )
        credentials = server_credentials(lambda: self._identity)
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self, grace: float) -> None:
        """Stop as a manager does (``grace`` for the calls in flight); wait until done."""
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(10 + grace)

    def __exit__(self, *exc: object) -> None:
        self.stop(0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def identity(ca: CertificateAuthority, name: str, role: str) -> TlsIdentity:
    cert, key = ca.issue_pair(name, role, timedelta(hours=1))
    return TlsIdentity(ca.cert_pem, cert, key)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("unary-test")


@pytest.fixture(scope="module")
def admin(ca: CertificateAuthority) -> TlsIdentity:
    return identity(ca, "admin", "admin")


@pytest.fixture(scope="module")
def server(ca: CertificateAuthority) -> Iterator[Server]:
    with Server(identity(ca, "manager-1", "manager")) as running:
        yield running


def write_bundle(
    tmp_path: Path, admin: TlsIdentity, monkeypatch: pytest.MonkeyPatch, **pem: str
) -> None:
    """The admin's credentials (some PEM replaced by ``pem``) where the CLI looks for a
    local cluster's."""
    state = tmp_path / "state"
    state.mkdir()
    data = {
        "name": "local",
        "servers": [],
        "ca": admin.ca_pem.decode(),
        "cert": admin.cert_pem.decode(),
        "key": admin.key_pem.decode(),
        **pem,
    }
    (state / "admin.yaml").write_text(json.dumps(data))
    for name in ("SHOAL_SERVER", "SHOAL_CONTEXT", "SHOAL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHOAL_STATE_DIR", str(state))
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "config.yaml"))


@pytest.fixture
def bundle(tmp_path: Path, admin: TlsIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bundle(tmp_path, admin, monkeypatch)


def dead_address() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def paused() -> Iterator[str]:
    """A manager that is stopped (SIGSTOP): the kernel completes the TCP handshake
    from the listen backlog, and then nothing answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def call(connection: UnaryConnection, request: Payload, timeout: float | None = 10) -> Payload:
    reply = connection.call(f"/{CONTROL_SERVICE}/Get", json.dumps(request).encode(), timeout)
    value: Payload = json.loads(reply)
    return value


def test_calls_on_one_connection_answer_in_turn_large_ones_too(
    server: Server, admin: TlsIdentity
) -> None:
    connection = UnaryConnection.open(server.address, tls_context(admin), 5)
    try:
        assert call(connection, {"kind": "services"}) == {
            "items": [{"kind": "services", "echo": 0}]
        }
        large = call(connection, {"kind": "large"})["items"]
        assert len(large) == LARGE // 1000
        assert large[-1] == {"name": "x" * 1000, "n": LARGE // 1000 - 1}
        # A request over the server's window: sent as the window opens.
        assert call(connection, {"kind": "pad", "pad": "p" * 900_000})["items"][0]["echo"] == (
            900_000
        )
        assert call(connection, {"kind": "again"})["items"][0]["kind"] == "again"
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        pytest.param("nope", "NOT_FOUND", "service 'nope' not found", id="not-found"),
        pytest.param(
            "odd", "INVALID_ARGUMENT", "replicas: 100% wrong, ünïcode too", id="percent-encoded"
        ),
    ],
)
def test_an_error_comes_back_with_its_code_and_message(
    server: Server, admin: TlsIdentity, kind: str, code: str, message: str
) -> None:
    connection = UnaryConnection.open(server.address, tls_context(admin), 5)
    try:
        with pytest.raises(ApiError) as caught:
            call(connection, {"kind": kind})
        assert (caught.value.code, str(caught.value)) == (code, message)
        assert call(connection, {"kind": "after"})["items"][0]["kind"] == "after"
    finally:
        connection.close()


def test_a_call_past_its_deadline_is_deadline_exceeded_and_the_connection_goes_on(
    server: Server, admin: TlsIdentity
) -> None:
    connection = UnaryConnection.open(server.address, tls_context(admin), 5)
    try:
        with pytest.raises(ApiError) as caught:
            call(connection, {"kind": "slow"}, timeout=0.3)
        assert caught.value.code == "DEADLINE_EXCEEDED"
        assert str(caught.value).startswith("the shoal manager did not answer in time")
        assert call(connection, {"kind": "next"})["items"][0]["kind"] == "next"
    finally:
        connection.close()


def test_a_dead_and_a_paused_manager_are_skipped_for_a_live_one(
    server: Server, bundle: None, paused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_client, "CONNECT_TIMEOUT", 0.5)
    dead = dead_address()
    with connect(f"{dead},{paused},{server.address}") as control:
        assert control.address == server.address
        items = complete(control.get("services"))
    assert items == [{"kind": "services", "echo": 0}]


def test_when_no_manager_answers_the_error_says_what_happened_at_each(
    bundle: None, paused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_client, "CONNECT_TIMEOUT", 0.5)
    dead = dead_address()
    with pytest.raises(ApiError) as caught, connect(f"{dead},{paused}"):
        pass
    assert caught.value.code == "UNAVAILABLE"
    assert (
        f"tried {dead} (connection refused, or the TLS handshake failed); "
        f"{paused} (no answer within 0.5s: down, paused or unreachable)"
    ) in str(caught.value)


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_certificate_of_another_cluster_is_refused(
    server: Server, admin: TlsIdentity, side: str
) -> None:
    other = CertificateAuthority.create("another-cluster")
    if side == "client":  # the manager refuses a caller its CA did not sign
        credentials = identity(other, "admin", "admin")
    else:  # the caller refuses a manager its CA did not sign
        credentials = TlsIdentity(other.cert_pem, admin.cert_pem, admin.key_pem)
    with pytest.raises(ConnectError) as caught:
        UnaryConnection.open(server.address, tls_context(credentials), 5)
    assert str(caught.value) == REFUSED


def test_a_manager_stopping_during_a_call_loses_the_connection_not_the_client(
    ca: CertificateAuthority, admin: TlsIdentity
) -> None:
    """A manager stopping gracefully says GOAWAY while a call is in flight: that call's
    outcome is unknown (connection lost, which the CLI reports as UNAVAILABLE), and so
    is every later call on the connection; neither escapes as an HTTP/2 error."""
    with Server(identity(ca, "manager-1", "manager")) as stopping:
        connection = UnaryConnection.open(stopping.address, tls_context(admin), 5)
        try:
            timer = threading.Timer(0.3, stopping.stop, args=(5,))
            timer.start()
            with pytest.raises(ConnectionLost):
                call(connection, {"kind": "linger"})
            timer.join()
            with pytest.raises(ConnectionLost):
                call(connection, {"kind": "after"})
        finally:
            connection.close()


@pytest.fixture
def mute(ca: CertificateAuthority) -> Iterator[str]:
    """A manager that completes TLS and HTTP/2's settings exchange, then answers no
    call at all (its loop stuck, say): only the client's own deadline ends a call."""
    import ssl

    import h2.config
    import h2.connection

    manager = identity(ca, "manager-1", "manager")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cadata=manager.ca_pem.decode())
    with tempfile.TemporaryDirectory() as directory:
        cert, key = Path(directory, "cert"), Path(directory, "key")
        cert.write_bytes(manager.cert_pem)
        key.write_bytes(manager.key_pem)
        context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        raw, _ = listener.accept()
        with context.wrap_socket(raw, server_side=True) as sock:
            peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            peer.initiate_connection()
            sock.sendall(peer.data_to_send())
            sock.settimeout(0.1)
            while not done.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                peer.receive_data(data)
                sock.sendall(peer.data_to_send())  # settings acks; never an answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        listener.close()


def test_the_client_keeps_the_deadline_itself(mute: str, admin: TlsIdentity) -> None:
    connection = UnaryConnection.open(mute, tls_context(admin), 5)
    try:
        with pytest.raises(ApiError) as caught:
            call(connection, {"kind": "services"}, timeout=0.5)
        assert caught.value.code == "DEADLINE_EXCEEDED"
        assert str(caught.value).startswith("the shoal manager did not answer in time")
    finally:
        connection.close()


@pytest.mark.parametrize(
    "part",
    [
        pytest.param("key", id="key"),
        pytest.param("cert", id="certificate"),
        pytest.param("ca", id="ca"),
    ],
)
def test_credentials_that_cannot_be_used_say_so_the_same_on_both_clients(
    server: Server, tmp_path: Path, admin: TlsIdentity, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    """A bundle whose PEM does not parse is one error, whichever client a verb uses
    (unary calls or grpc.aio): UNAUTHENTICATED, naming what cannot be used, and not
    "cannot reach a shoal manager", which would send the user looking at the network."""
    garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    write_bundle(tmp_path, admin, monkeypatch, **{part: garbage})

    with pytest.raises(ApiError) as unary, connect(server.address):
        pass

    async def on_grpc() -> None:
        async with api_client.open_control(server.address):
            pass

    with pytest.raises(ApiError) as on_loop:
        asyncio.run(on_grpc())
    assert unary.value.code == "UNAUTHENTICATED"
    assert str(unary.value).startswith("these credentials' ")
    assert "cannot be used" in str(unary.value)
    assert (on_loop.value.code, str(on_loop.value)) == (unary.value.code, str(unary.value))
