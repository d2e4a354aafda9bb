"""gRPC call metrics on a real grpc.aio server: what a client saw is what is counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from shoal.api.transport import Payload, ServerStream, Unary, decode, encode, service_handler
from shoal.errors import NotFoundError
from shoal.manager.rpcmetrics import RpcMetrics

SERVICE = "shoal.v1.Test"


async def echo(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
    if request.get("missing"):
        raise NotFoundError("service nope not found")
    if request.get("bug"):
        raise RuntimeError("a bug")
    return {"echo": request.get("text", "")}


async def count(request: Payload, context: grpc.aio.ServicerContext) -> AsyncIterator[Payload]:
    for number in range(int(request["upTo"])):
        yield {"n": number}


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[RpcMetrics(registry).interceptor()])
    server.add_generic_rpc_handlers(
        (service_handler(SERVICE, {"Echo": Unary(echo), "Count": ServerStream(count)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield channel, registry
    await channel.close()
    await server.stop(0)


def handled(registry: CollectorRegistry, method: str, code: str) -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code}
    return registry.get_sample_value("shoal_grpc_server_handled_total", labels) or 0.0


async def test_calls_are_counted_by_method_and_the_code_the_client_got(
    served: tuple[grpc.aio.Channel, CollectorRegistry],
) -> None:
    channel, registry = served
    call = channel.unary_unary(
        f"/{SERVICE}/Echo", request_serializer=encode, response_deserializer=decode
    )
    assert await call({"text": "hi"}) == {"echo": "hi"}
    assert await call({"text": "again"}) == {"echo": "again"}
    codes = []
    for bad in ({"missing": True}, {"bug": True}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(bad)
        codes.append(caught.value.code().name)
    assert codes == ["NOT_FOUND", "UNKNOWN"]
    assert handled(registry, "Echo", "OK") == 2.0
    assert handled(registry, "Echo", "NOT_FOUND") == 1.0
    assert handled(registry, "Echo", "UNKNOWN") == 1.0
    duration = {"grpc_service": SERVICE, "grpc_method": "Echo"}
    assert registry.get_sample_value("shoal_grpc_server_handling_seconds_count", duration) == 4.0
    assert registry.get_sample_value("shoal_grpc_server_started_total", duration) == 4.0


async def test_a_stream_is_counted_when_it_ends(
    served: tuple[grpc.aio.Channel, CollectorRegistry],
) -> None:
    channel, registry = served
    stream = channel.unary_stream(
        f"/{SERVICE}/Count", request_serializer=encode, response_deserializer=decode
    )
    assert [item["n"] async for item in stream({"upTo": 3})] == [0, 1, 2]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream({}):  # "upTo" missing: the handler trips over the request
            pass
    # The transport maps a missing request field to INVALID_ARGUMENT, naming it.
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert handled(registry, "Count", "OK") == 1.0
    assert handled(registry, "Count", "INVALID_ARGUMENT") == 1.0


async def test_an_unknown_method_adds_no_label(
    served: tuple[grpc.aio.Channel, CollectorRegistry],
) -> None:
    channel, registry = served
    call = channel.unary_unary(
        f"/{SERVICE}/Nope{id(channel)}", request_serializer=encode, response_deserializer=decode
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call({})
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    families = [f for f in registry.collect() if f.name == "shoal_grpc_server_handled"]
    assert [s.labels["grpc_method"] for f in families for s in f.samples] == []
