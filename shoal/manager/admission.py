"""Admission: a busy manager sheds calls at once instead of letting them time out.

A call that would wait behind too many others is answered ``RESOURCE_EXHAUSTED``
(``BusyError``) before any work is done, so the caller knows in milliseconds
that it should come back later, and the work the manager does take on stays
small enough to finish in time. Two gates:

* **Registrations.** A node opening its session costs a store write and a full
  assignment set. When a thousand agents lose their sessions together (a
  manager restart, a network blip) they come back together; at most
  ``max_registering`` are admitted at once and the rest are told to back off
  (agents retry with jittered exponential backoff, so the herd spreads out).
* **Control calls.** At most ``max_control`` Control calls are served at once;
  a call whose deadline has already passed when its turn comes is dropped
  unserved (its caller has given up: a ``get tasks`` of 100,000 tasks nobody
  waits for is pure harm to a busy manager).

Heartbeats, status reports and the established session streams are never
shed: they are how a manager keeps knowing its nodes are alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc.aio
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shoal.api.transport import Method, Payload, ServerStream, Unary
from shoal.errors import BusyError


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    max_registering: int = 64
    max_control: int = 128


class Admission:
    """The gates described above, counting what is in flight."""

    def __init__(self, settings: AdmissionSettings | None = None) -> None:
        self.settings = settings or AdmissionSettings()
        self.registering = 0
        self.control_calls = 0
        self.shed: dict[str, int] = {"registration": 0, "control": 0}

    def control(self, methods: dict[str, Method]) -> dict[str, Method]:
        gated: dict[str, Method] = dict(methods)
        for name, method in methods.items():
            if isinstance(method, Unary):
                gated[name] = Unary(self._unary(method))
        return gated

    def _unary(self, method: Unary) -> Any:
        async def handler(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                self.shed["control"] += 1
                raise BusyError("the manager is busy: this call waited past its deadline")
            if self.control_calls >= self.settings.max_control:
                self.shed["control"] += 1
                raise BusyError(
                    f"the manager is busy: {self.control_calls} calls in flight; try again shortly"
                )
            self.control_calls += 1
            try:
                return await method.handler(request, context)
            finally:
                self.control_calls -= 1

        return handler

    def dispatcher(self, methods: dict[str, Method]) -> dict[str, Method]:
        gated = dict(methods)
        session = methods["Session"]
        assert isinstance(session, ServerStream)

        async def admitted(
            request: Payload, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Payload]:
            if self.registering >= self.settings.max_registering:
                self.shed["registration"] += 1
                raise BusyError(
                    f"the manager is busy: {self.registering} nodes are registering; "
                    "retry after a backoff"
                )
            self.registering += 1
            registered = False
            try:
                async for message in session.handler(request, context):
                    if not registered and message.get("type") in ("session", "redirect"):
                        registered = True
                        self.registering -= 1
                    yield message
            finally:
                if not registered:
                    self.registering -= 1

        gated["Session"] = dataclasses.replace(session, handler=admitted)
        return gated


class AdmissionCollector(Collector):
    """``shoal_calls_shed_total{gate}``: calls answered RESOURCE_EXHAUSTED unserved."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[CounterMetricFamily]:
        shed = CounterMetricFamily(
            "shoal_calls_shed",
            "Calls a busy manager answered RESOURCE_EXHAUSTED without serving them, by gate.",
            labels=["gate"],
        )
        for gate, count in self.admission.shed.items():
            shed.add_metric([gate], count)
        yield shed
