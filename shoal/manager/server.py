"""The manager process: store, informer, reconcilers, and the gRPC services.

``open_manager(settings)`` is an async context manager that owns all of it:
on entry the store is open, the informer synced, the controllers running and
the gRPC server listening (``manager.address`` is the bound address, useful
with port 0); on exit everything is released in reverse order. Running tasks
on agents are unaffected by a manager stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import structlog
from prometheus_client import CollectorRegistry, start_http_server

from shoal.api.transport import (
    CONTROL_SERVICE,
    DISPATCHER_SERVICE,
    SERVER_OPTIONS,
    service_handler,
)
from shoal.manager.control import Control
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.metrics import ClusterCollector
from shoal.paths import ENDPOINT_FILE
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import ControllerRunner, LoopMetrics
from shoal.reconciler.nodemonitor import HeartbeatTracker, NodeMonitor
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.scheduler import Scheduler
from shoal.runtimes.registry import register_known_runtimes
from shoal.store import open_store
from shoal.store.typed import ClusterConfig, Object, TypedStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    store_url: str
    state_dir: Path
    listen: str = "127.0.0.1:7420"
    metrics_listen: str | None = None
    heartbeat_period: float = 2.0
    # A node silent for this long is down; default three heartbeat periods.
    node_grace: float | None = None
    resync_period: float = 30.0

    @property
    def grace(self) -> float:
        return self.node_grace if self.node_grace is not None else 3 * self.heartbeat_period


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class Manager:
    """A running manager; see ``open_manager``."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.address = ""
        self.metrics_port: int | None = None
        self.registry = CollectorRegistry()
        self.events = EventRecorder()
        self.heartbeats = HeartbeatTracker()
        self._stack = contextlib.AsyncExitStack()
        self.runners: list[ControllerRunner] = []

    async def start(self) -> None:
        settings = self.settings
        register_known_runtimes()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(settings.store_url)
        self._stack.push_async_callback(store.aclose)
        typed = TypedStore(store)
        config = await typed.get_config() or await typed.create_config(
            ClusterConfig(
                worker_token=f"SHOAL-1-{secrets.token_urlsafe(24)}",
                cluster_id=secrets.token_hex(8),
            )
        )
        self.worker_token = config.worker_token
        self.informer = Informer(store, typed)
        await self.informer.start()
        self._stack.push_async_callback(self.informer.aclose)

        metrics = LoopMetrics(self.registry)
        self.orchestrator = Orchestrator(self.informer, self.events)
        scheduler = Scheduler(self.informer, self.events)
        monitor = NodeMonitor(self.informer, self.events, self.heartbeats, settings.grace)
        controllers = (self.orchestrator, scheduler, monitor)
        self.runners = [ControllerRunner(c, metrics, settings.resync_period) for c in controllers]

        def route(old: Object | None, new: Object | None) -> None:
            for controller, runner in zip(controllers, self.runners, strict=True):
                for key in controller.keys_for(old, new):
                    runner.enqueue(key)

        self.informer.subscribe(route)
        for runner in self.runners:
            runner.start()
            self._stack.push_async_callback(runner.aclose)

        self.dispatcher = Dispatcher(
            self.informer,
            self.heartbeats,
            self.events,
            self.worker_token,
            settings.heartbeat_period,
        )
        control = Control(
            self.informer,
            self.dispatcher,
            self.events,
            self.orchestrator,
            self.runners[0],
            self.worker_token,
        )
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers(
            (
                service_handler(CONTROL_SERVICE, control.methods()),
                service_handler(DISPATCHER_SERVICE, self.dispatcher.methods()),
            )
        )
        host, _ = split_host_port(settings.listen)
        port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
        await server.start()
        self._stack.push_async_callback(server.stop, 1.0)
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

        self.registry.register(ClusterCollector(self.informer))
        if settings.metrics_listen:
            metrics_host, metrics_port = split_host_port(settings.metrics_listen)
            http_server, _thread = start_http_server(metrics_port, metrics_host, self.registry)
            self.metrics_port = http_server.server_port
            self._stack.callback(http_server.shutdown)

        endpoint = settings.state_dir / ENDPOINT_FILE
        tmp = endpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": self.address, "pid": os.getpid()}))
        tmp.replace(endpoint)
        self._stack.callback(endpoint.unlink, missing_ok=True)
        log.info(
            "manager.started",
            address=self.address,
            store=settings.store_url,
            metrics_port=self.metrics_port,
            nodes=len(self.informer.nodes),
            services=len(self.informer.services),
        )

    async def aclose(self) -> None:
        await self._stack.aclose()
        log.info("manager.stopped")


@contextlib.asynccontextmanager
async def open_manager(settings: ManagerSettings) -> AsyncIterator[Manager]:
    manager = Manager(settings)
    try:
        await manager.start()
        yield manager
    finally:
        await manager.aclose()


async def serve_forever() -> None:
    await asyncio.Event().wait()
