"""Several managers, one leader: what a follower answers itself and what it forwards.

Every manager serves the same Control and Dispatcher services. A follower's
informer is fed by the store watch, so it answers reads (``Get``, ``Token``,
``Version``, ``ClusterStatus``) itself. Everything that writes, or needs the
leader's in-memory state (``Describe``: controller outcomes and events;
``Logs``, ``Exec``: the agents' sessions), is forwarded to the leader over gRPC and the
answer (or the error, with its status code) returned as it came. A forwarded
call carries ``x-shoal-forwarded`` so it is never forwarded twice: two
managers that briefly disagree about who leads answer "not the leader"
instead of bouncing a call between them.

Agents keep their sessions with the leader only (its node monitor needs their
heartbeats). A follower answers ``Session`` with one ``redirect`` message
naming the leader (or none, during an election) and the managers; the leader's
first ``session`` message and every heartbeat answer carry the manager list too,
so an agent that was given one address learns the others, and keeps learning
them for as long as its session lasts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from shoal.api.transport import (
    CONTROL_SERVICE,
    Method,
    Payload,
    ServerStream,
    TlsCredentials,
    Unary,
    decode,
    encode,
    map_rpc_error,
    open_channel,
)
from shoal.errors import ApiError
from shoal.manager.election import Election
from shoal.security.authz import forward_metadata
from shoal.store.base import Store

FORWARDED = "x-shoal-forwarded"
FORWARD_TIMEOUT = 30.0
# Control methods only the leader can answer.
LEADER_UNARY = (
    "Apply",
    "Delete",
    "Scale",
    "UpdateNode",
    "Describe",
    # rollouts and jobs (shoal.manager.rollouts, shoal.manager.jobs)
    "Rollout",
    "RunJob",
    # secrets and configs (shoal.manager.secretstore)
    "CreateSecret",
    "RemoveSecret",
    "CreateConfig",
    "RemoveConfig",
    # a node's removal deletes the node, a fenced write (shoal.security.service)
    "NodeRemove",
    "SyncNow",
    "SyncSuspend",
    "DescribeSync",
    "SyncDelete",
)
LEADER_STREAMS = ("Logs", "Exec")


def _forwarded(context: grpc.aio.ServicerContext) -> bool:
    return any(key == FORWARDED for key, _ in context.invocation_metadata() or ())


class Router:
    """Wraps a manager's Control and Dispatcher methods for leader/follower duty."""

    def __init__(
        self,
        election: Election,
        store: Store,
        identity: Callable[[], TlsCredentials],
        conditions: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self.election = election
        self.store = store
        self.identity = identity  # this manager's certificate: forwarding wants one
        self.conditions = conditions
        self._channels: dict[str, tuple[grpc.aio.Channel, TlsCredentials]] = {}

    async def aclose(self) -> None:
        for channel, _ in self._channels.values():
            await channel.close()
        self._channels.clear()

    def manager_addresses(self) -> list[str]:
        """Every live manager's address, the leader first."""
        leader = self.election.leader
        addresses = [leader.address] if leader else []
        for info in sorted(self.election.managers.values(), key=lambda m: m.started_at):
            if info.address not in addresses:
                addresses.append(info.address)
        return addresses

    # ----------------------------------------------------------- Control

    def control(self, methods: dict[str, Method]) -> dict[str, Method]:
        routed = dict(methods)
        for name in LEADER_UNARY:
            handler = methods[name]
            assert isinstance(handler, Unary)
            routed[name] = Unary(self._unary(name, handler))
        for name in LEADER_STREAMS:
            stream = methods[name]
            assert isinstance(stream, ServerStream)
            routed[name] = ServerStream(self._stream(name, stream))
        routed["ClusterStatus"] = Unary(self.cluster_status)
        return routed

    def _leader_channel(self, context: grpc.aio.ServicerContext) -> grpc.aio.Channel:
        leader = self.election.leader
        if _forwarded(context) or leader is None or leader.id == self.election.me.id:
            raise self.election.not_leader()
        identity = self.identity()
        cached = self._channels.get(leader.address)
        if cached is None or cached[1] is not identity:  # new leader, or our cert was renewed
            # An old channel is left to its calls in flight; it closes when collected.
            cached = self._channels[leader.address] = (
                open_channel(leader.address, identity),
                identity,
            )
        return cached[0]

    def _unary(self, name: str, local: Unary) -> Any:
        async def handler(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            if self.election.is_leader:
                return await local.handler(request, context)
            stub = self._leader_channel(context).unary_unary(
                f"/{CONTROL_SERVICE}/{name}",
                request_serializer=encode,
                response_deserializer=decode,
            )
            try:
                reply: Payload = await stub(
                    request,
                    timeout=FORWARD_TIMEOUT,
                    metadata=((FORWARDED, "1"), *forward_metadata()),
                )
            except grpc.aio.AioRpcError as exc:
                await _relay(context, map_rpc_error(exc))
                raise  # unreachable: abort raises
            return reply

        return handler

    def _stream(self, name: str, local: ServerStream) -> Any:
        async def handler(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            if self.election.is_leader:
                async for item in local.handler(request, context):
                    yield item
                return
            stub = self._leader_channel(context).unary_stream(
                f"/{CONTROL_SERVICE}/{name}",
                request_serializer=encode,
                response_deserializer=decode,
            )
            call = stub(request, metadata=((FORWARDED, "1"), *forward_metadata()))
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as exc:
                await _relay(context, map_rpc_error(exc))
            finally:
                call.cancel()

        return handler

    async def cluster_status(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        election = self.election
        leader = election.leader
        managers = [
            {
                "id": info.id,
                "address": info.address,
                "startedAt": info.started_at.isoformat(),
                "leader": leader is not None and info.id == leader.id,
                "self": info.id == election.me.id,
            }
            for info in sorted(election.managers.values(), key=lambda m: m.started_at)
        ]
        endpoints = [
            {
                "endpoint": h.endpoint,
                "healthy": h.healthy,
                "detail": h.detail,
                "leader": h.leader,
                "revision": h.revision,
            }
            for h in await self.store.health()
        ]
        return {
            "managers": managers,
            "leader": leader.address if leader else None,
            "answeredBy": election.me.address,
            "electionError": election.last_error,
            "store": {"url": self.store.url, "endpoints": endpoints},
            "conditions": self.conditions(),
        }

    # -------------------------------------------------------- Dispatcher

    def dispatcher(self, methods: dict[str, Method]) -> dict[str, Method]:
        routed = dict(methods)
        session = methods["Session"]
        assert isinstance(session, ServerStream)

        async def gated(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            if not self.election.is_leader:
                leader = self.election.leader
                yield {
                    "type": "redirect",
                    "leader": leader.address if leader else None,
                    "managers": self.manager_addresses(),
                }
                return
            async for message in session.handler(request, context):
                if message.get("type") in ("session", "heartbeat"):
                    message = {**message, "managers": self.manager_addresses()}
                yield message

        routed["Session"] = dataclasses.replace(session, handler=gated)
        heartbeat = methods["Heartbeat"]
        assert isinstance(heartbeat, Unary)

        async def beat(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            # Every heartbeat brings the current manager list, so an agent knows
            # managers that joined or came back since its session began.
            reply = await heartbeat.handler(request, context)
            return {**reply, "managers": self.manager_addresses()}

        routed["Heartbeat"] = Unary(beat)
        return routed


async def _relay(context: grpc.aio.ServicerContext, error: ApiError) -> None:
    """Answer with the leader's error, status code and all."""
    code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)
    await context.abort(code, error.message)
