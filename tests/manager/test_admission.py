"""Admission on a real gRPC server: a busy manager answers RESOURCE_EXHAUSTED at once.

The handlers behind the gates are held on an event, so the test decides when
the manager is "busy"; the calls go over loopback gRPC like an agent's or the
CLI's, and what the test checks is the status code the caller gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest

from shoal.api.transport import (
    CONTROL_SERVICE,
    DISPATCHER_SERVICE,
    Client,
    Payload,
    ServerStream,
    Unary,
    open_channel,
    server_credentials,
    service_handler,
)
from shoal.errors import ApiError
from shoal.manager.admission import Admission, AdmissionSettings
from shoal.security.ca import ROLE_ADMIN, ROLE_MANAGER, CertificateAuthority
from shoal.security.credentials import TlsIdentity

CA = CertificateAuthority.create("admission")


def identity(name: str, role: str) -> TlsIdentity:
    cert, key = CA.issue_pair(name, role)
    return TlsIdentity(CA.cert_pem, cert, key)


CLIENT = identity("tester", ROLE_ADMIN)


class Held:
    """Handlers that wait until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def unary(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        self.entered += 1
        await self.release.wait()
        return {"ok": True}

    async def session(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        self.entered += 1
        await self.release.wait()  # registering: the store write of a busy manager
        yield {"type": "session", "sessionId": "s"}
        yield {"type": "assignments", "full": True, "tasks": []}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Admission, Held, str]]:
    admission = Admission(AdmissionSettings(max_registering=2, max_control=2))
    held = Held()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            service_handler(CONTROL_SERVICE, admission.control({"Get": Unary(held.unary)})),
            service_handler(
                DISPATCHER_SERVICE, admission.dispatcher({"Session": ServerStream(held.session)})
            ),
        )
    )
    own = identity("manager-admission", ROLE_MANAGER)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(lambda: own))
    await server.start()
    try:
        yield admission, held, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_control_calls_beyond_the_limit_are_shed_and_later_ones_served(
    served: tuple[Admission, Held, str],
) -> None:
    admission, held, address = served
    channel = open_channel(address, CLIENT)
    client = Client(channel, CONTROL_SERVICE)
    try:
        busy = [asyncio.create_task(client.call("Get", {}, timeout=30)) for _ in range(2)]
        await until(lambda: held.entered == 2, "two calls in flight")

        with pytest.raises(ApiError) as refused:
            await client.call("Get", {}, timeout=30)
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert "busy" in refused.value.message
        assert admission.shed["control"] == 1

        held.release.set()
        assert [await call for call in busy] == [{"ok": True}] * 2
        assert await client.call("Get", {}, timeout=30) == {"ok": True}
    finally:
        await channel.close()


async def test_registrations_beyond_the_limit_are_shed_until_sessions_open(
    served: tuple[Admission, Held, str],
) -> None:
    admission, held, address = served
    channel = open_channel(address, CLIENT)
    client = Client(channel, DISPATCHER_SERVICE)

    async def first_message() -> Payload:
        async for message in client.stream("Session", {}):
            return message
        raise AssertionError("no message")

    try:
        registering = [asyncio.create_task(first_message()) for _ in range(2)]
        await until(lambda: held.entered == 2, "two registrations in flight")

        with pytest.raises(ApiError) as refused:
            await first_message()
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert admission.shed["registration"] == 1

        held.release.set()
        assert [(await r)["type"] for r in registering] == ["session", "session"]
        # Those sessions are open now: they no longer count against registrations.
        assert admission.registering == 0
        assert (await first_message())["type"] == "session"
    finally:
        await channel.close()
