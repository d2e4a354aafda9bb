"""gRPC calls a manager served, by service, method and status code, and how long they took.

A server interceptor wraps every method handler, whatever the layers below it
do (admission, roles, forwarding to the leader): it sees the call's final
status the way the client does. Names and labels follow the ones most gRPC
exporters use (``grpc_service``, ``grpc_method``, ``grpc_code``), so existing
dashboards' queries read the same. The label sets are bounded: the methods
are the services' fixed tables (a method no handler serves is not counted:
gRPC answers it UNIMPLEMENTED before any handler runs), the codes gRPC's
seventeen.

Streams (an agent's session, ``logs -f``) are counted when they end, with the
time they were open; ``shoal_grpc_server_started_total`` minus handled is what
is open now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

# Unary calls take milliseconds; streams stay open for minutes or days.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600)


class RpcMetrics:
    """The families; ``interceptor()`` is what the server is built with."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method"]
        self.started = Counter(
            "shoal_grpc_server_started_total",
            "gRPC calls this manager began serving.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "shoal_grpc_server_handled_total",
            "gRPC calls this manager finished serving, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.duration = Histogram(
            "shoal_grpc_server_handling_seconds",
            "How long this manager took to serve a gRPC call (a stream: how long it was open).",
            labels,
            registry=registry,
            buckets=BUCKETS,
        )

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self)

    def labels_of(self, full_method: str) -> tuple[str, str]:
        """``/shoal.v1.Control/Apply`` → ``("shoal.v1.Control", "Apply")``."""
        service, _, method = full_method.lstrip("/").partition("/")
        return service, method

    def done(self, labels: tuple[str, str], code: str, began: float) -> None:
        self.handled.labels(*labels, code).inc()
        self.duration.labels(*labels).observe(time.monotonic() - began)


def _code(
    context: grpc.aio.ServicerContext | grpc.ServicerContext, error: BaseException | None
) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the client went away
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # some grpcio versions keep the number
        return next((str(c.name) for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "OK" if error is None else grpc.StatusCode.UNKNOWN.name


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        labels = self.metrics.labels_of(str(details.method))
        metrics = self.metrics
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(metrics, labels, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(metrics, labels, handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_unary(metrics, labels, handler.stream_unary))
        if handler.stream_stream is not None:
            return handler._replace(
                stream_stream=_streaming(metrics, labels, handler.stream_stream)
            )
        return handler


def _unary(
    metrics: RpcMetrics, labels: tuple[str, str], behaviour: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        metrics.started.labels(*labels).inc()
        began = time.monotonic()
        error: BaseException | None = None
        try:
            return await behaviour(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.done(labels, _code(context, error), began)

    return call


def _streaming(
    metrics: RpcMetrics, labels: tuple[str, str], behaviour: Callable[..., AsyncIterator[Any]]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        metrics.started.labels(*labels).inc()
        began = time.monotonic()
        error: BaseException | None = None
        try:
            async for item in behaviour(request, context):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics.done(labels, _code(context, error), began)

    return call
