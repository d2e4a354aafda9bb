"""The Control service on grpc.aio: the transport of ``shoal.api.client.open_control``.

Commands that stream (``logs -f``, ``events -w``, ``exec``) or wait on an event
loop use this; plain unary commands use ``shoal.api.unary``, which spares them
importing grpc. Both pick a manager the same way: each address in turn, given
``connect_timeout`` to complete its TLS handshake, so a manager that is down or
paused costs seconds, not a hung command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from shoal.api.client import UNAVAILABLE, unreachable_message
from shoal.api.transport import CONTROL_SERVICE, Client, Payload, TlsCredentials, open_channel
from shoal.errors import ApiError


async def _ready(channel: grpc.aio.Channel, timeout: float) -> str | None:
    """None once the channel is connected (TLS done), else why it is not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            return "connection refused, or the TLS handshake failed"
        remaining = deadline - loop.time()
        if remaining <= 0:
            return f"no answer within {timeout:g}s: down, paused or unreachable"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return None


class GrpcTransport:
    """Control calls on one grpc.aio channel (``shoal.api.client.Transport``)."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self.address = address
        self._channel = channel
        self._client = Client(channel, CONTROL_SERVICE)

    def _remap(self, exc: ApiError) -> ApiError:
        """Tell "no manager there" apart from an UNAVAILABLE the manager itself sent."""
        if exc.code != UNAVAILABLE:
            return exc
        state = self._channel.get_state(try_to_connect=False)
        if state == grpc.ChannelConnectivity.READY:
            return exc
        return ApiError(UNAVAILABLE, unreachable_message([(self.address, "connection lost")]))

    async def call(self, method: str, request: Payload, timeout: float | None) -> Payload:
        try:
            return await self._client.call(method, request, timeout=timeout)
        except ApiError as exc:
            raise self._remap(exc) from exc

    async def stream(self, method: str, request: Payload) -> AsyncIterator[Payload]:
        try:
            async for item in self._client.stream(method, request):
                yield item
        except ApiError as exc:
            raise self._remap(exc) from exc


@contextlib.asynccontextmanager
async def open_grpc(
    target: TlsCredentials, servers: list[str], connect_timeout: float
) -> AsyncIterator[GrpcTransport]:
    """A transport on the first of ``servers`` that answers, closed on exit."""
    tried: list[tuple[str, str]] = []
    for address in servers:
        channel = open_channel(address, target)
        why = await _ready(channel, connect_timeout)
        if why is None:
            try:
                yield GrpcTransport(channel, address)
            finally:
                await channel.close()
            return
        tried.append((address, why))
        await channel.close()
    raise ApiError(UNAVAILABLE, unreachable_message(tried))
