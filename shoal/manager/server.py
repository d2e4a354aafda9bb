"""The manager process: store, informer, reconcilers, and the gRPC services.

``open_manager(settings)`` is an async context manager that owns all of it:
on entry the store is open, the informer synced, the gRPC server listening
(``manager.address`` is the bound address, useful with port 0) and the manager
campaigning; on exit everything is released in reverse order. Running tasks
on agents are unaffected by a manager stopping.

The controllers run only while this manager leads (``shoal.manager.election``):
on an embedded store that is at once and for good; on etcd from the moment it
wins until it loses its lease, with every write fenced on its term. Followers
answer reads and forward the rest (``shoal.manager.routing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc.aio
import prometheus_client
import structlog
from prometheus_client import CollectorRegistry, Gauge

from shoal.api.address import split_host_port
from shoal.api.transport import (
    CONTROL_SERVICE,
    DISPATCHER_SERVICE,
    SERVER_OPTIONS,
    Method,
    Payload,
    service_handler,
)
from shoal.errors import DataKeyError
from shoal.exposition import reachable_address, serve_metrics
from shoal.http.server import WebUi
from shoal.manager.admission import Admission, AdmissionCollector
from shoal.manager.control import Control
from shoal.manager.discovery import SD_PATH, discovery_route
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.election import Election, LeaseElection, SoleElection, manager_info
from shoal.manager.metrics import ClusterCollector, ElectionCollector
from shoal.manager.routing import Router
from shoal.manager.rpcmetrics import RpcMetrics
from shoal.manager.secretstore import SecretStore
from shoal.paths import ENDPOINT_FILE
from shoal.reconciler.events import EventRecorder, EventSettings, record_task_change
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import ControllerRunner, LoopMetrics
from shoal.reconciler.nodemonitor import (
    CLUSTER_OBJECT,
    GuardState,
    HeartbeatTracker,
    MonitorSettings,
    NodeMonitor,
    guard_from_nodes,
    probe_stalls,
)
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.reports import Reports
from shoal.reconciler.scheduler import Scheduler
from shoal.reconciler.sources import SourceFetcher
from shoal.reconciler.sync import SyncController
from shoal.runtimes.registry import runtime_catalogue
from shoal.security.ca import CertInfo
from shoal.security.datakey import DataKey, verify_against_store
from shoal.security.manager import ManagerSecurity
from shoal.store import open_store
from shoal.store.metered import MeteredStore, write_histogram
from shoal.store.typed import ClusterConfig, Object, TypedStore
from shoal.supervise import RestartsCollector

log = structlog.get_logger(__name__)

# The data key's file in the state dir when --data-key-file is not given.
DATA_KEY_FILE = "datakey"


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
    # etcd only: the leader's lease; a dead leader is replaced within about this long.
    lease_ttl: float = 5.0
    # After a manager starts leading (a start, a leader change), nodes get this
    # long to find it before being declared down; default grace + 2 lease ttls + 5 s.
    failover_grace: float | None = None
    # The address other managers and agents reach this one at (default: the bound one).
    advertise: str | None = None
    # The data key secrets are encrypted with (shoal.security.datakey). Default: the
    # state dir's ``datakey`` (created on first start); etcd needs one file for all managers.
    data_key_file: Path | None = None
    # Where agents without a certificate join (default: --listen's port + 2; + 1 is
    # where the README suggests metrics).
    join_listen: str | None = None
    # Node and user certificates' validity (renewed at 50-80 % of it).
    cert_expiry: float = 90 * 24 * 3600.0
    # More than this share of the nodes silent at once: the node monitor orphans
    # nothing (shoal.reconciler.nodemonitor); 1.0 turns the guard off.
    disruption_threshold: float = 0.55
    # How many events are kept, and for how long (shoal.reconciler.events).
    events: EventSettings = field(default_factory=EventSettings)
    # The HTTP API and web UI (shoal.http), off unless given.
    http_listen: str | None = None

    @property
    def join_address(self) -> str:
        if self.join_listen:
            return self.join_listen
        host, port = split_host_port(self.listen)
        return f"{host}:{port + 2 if port else 0}"

    @property
    def grace(self) -> float:
        return self.node_grace if self.node_grace is not None else 3 * self.heartbeat_period

    @property
    def failover(self) -> float:
        if self.failover_grace is not None:
            return self.failover_grace
        return self.grace + 2 * self.lease_ttl + 5.0


class Manager:
    """A running manager; see ``open_manager``."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.address = ""
        self.metrics_port: int | None = None
        self.registry = CollectorRegistry()
        self.events = EventRecorder(settings.events)
        # What the orchestrator says about each service, for the Control API.
        self.reports = Reports()
        self.heartbeats = HeartbeatTracker()
        # Background jobs restarted after unexpected errors (shoal.supervise).
        self.restarts: Counter[str] = Counter()
        self._stack = contextlib.AsyncExitStack()
        self.runners: list[ControllerRunner] = []

    async def start(self) -> None:
        settings = self.settings
        # Which runtimes applied specs may name (the models never look for plugins).
        runtimes = runtime_catalogue()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.data_key = self._load_data_key()
        store = MeteredStore(await open_store(settings.store_url), write_histogram(self.registry))
        self._stack.push_async_callback(store.aclose)
        self.store = store
        await verify_against_store(self.data_key, store)
        # Several managers need etcd; on an embedded store its own lock makes this one sole.
        self.election: Election
        if store.url.startswith("etcd://"):
            self.election = LeaseElection(
                store, manager_info(""), settings.lease_ttl, self.restarts
            )
            typed = TypedStore(store, fence=self.election)
        else:
            self.election = SoleElection(manager_info(""))
            typed = TypedStore(store)
        config = await typed.get_config() or await typed.create_config(
            ClusterConfig(cluster_id=secrets.token_hex(8))
        )
        self.security = ManagerSecurity(
            store,
            settings.state_dir,
            self.election.me.id,
            timedelta(seconds=settings.cert_expiry),
            self.data_key,
        )
        await self.security.start(config.cluster_id)
        audit_denied = self.security.audit.denied

        def denied(
            method: str, reason: str, request: Payload | None, cert: CertInfo | None
        ) -> None:
            audit_denied(method, reason, request, cert)
            self.events.refused(method, reason, request)  # `shoal events --type Warning`

        self.security.authorizer.denied = denied
        self._stack.push_async_callback(self.security.aclose)
        self.informer = Informer(store, typed, self.restarts)
        await self.informer.start()
        self._stack.push_async_callback(self.informer.aclose)
        await self.events.start(store, trims=lambda: self.election.is_leader)
        self._stack.push_async_callback(self.events.aclose)

        def task_events(old: Object | None, new: Object | None) -> None:
            if self.election.is_leader:  # one manager tells each change
                record_task_change(self.events, old, new)

        self.informer.subscribe(task_events)

        self._loop_metrics = LoopMetrics(self.registry)
        scheduler = Scheduler(self.informer, self.events)
        # New tasks are placed as they are created: written once, assigned.
        self.orchestrator = Orchestrator(
            self.informer, self.events, reports=self.reports, placer=scheduler
        )
        self.monitor = NodeMonitor(
            self.informer,
            self.events,
            self.heartbeats,
            MonitorSettings(
                grace=settings.grace,
                settle=settings.heartbeat_period,
                disruption_threshold=settings.disruption_threshold,
            ),
        )
        self.secret_store = SecretStore(self.informer, self.data_key, self.events)
        syncs = SyncController(
            self.informer,
            self.events,
            SourceFetcher(settings.state_dir / "sync", secrets=self.secret_store.secret_bytes),
            configs=self.secret_store,
        )
        self.controllers = (self.orchestrator, scheduler, self.monitor, syncs)
        # Runners run only while this manager leads (see _elected / _deposed).
        self.runners = []

        def route(old: Object | None, new: Object | None) -> None:
            for runner in self.runners:
                for key in runner.controller.keys_for(old, new):
                    runner.enqueue(key)

        self.informer.subscribe(route)
        self._stack.push_async_callback(self._stop_runners)

        self.dispatcher = Dispatcher(
            self.informer,
            self.heartbeats,
            self.events,
            settings.heartbeat_period,
            deliveries=self.secret_store.deliveries,
            registry=self.registry,
        )
        self._stack.push_async_callback(self.dispatcher.aclose)
        # A removed node's session ends at once (its next calls are refused anyway).
        self.security.state.on_revoked(self._revoked)
        self.control = Control(
            self.informer,
            self.dispatcher,
            self.events,
            self.reports,
            runtimes,
            secret_store=self.secret_store,
        )
        self.web = WebUi()
        router = Router(
            self.election,
            store,
            lambda: self.security.identity,
            self.conditions,
        )
        self._stack.push_async_callback(router.aclose)
        security = self.security
        # gRPC sets SO_REUSEPORT by default, and then a second manager on a port
        # already taken starts "fine" and the kernel splits the clients between them.
        rpc_metrics = RpcMetrics(self.registry)
        server = grpc.aio.server(
            options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 0)],
            interceptors=[rpc_metrics.interceptor()],
        )
        # Outside in: the per-connection cap and size limits (transport), who may
        # call what (authz: a refused caller takes no admission slot), admission
        # (shed when busy), the audit log, leader routing, the handlers.
        self.admission = Admission()
        routed = router.control(
            {
                **self.control.methods(),
                **self.secret_store.methods(),
                **security.control_methods(self.informer, router.manager_addresses),
                **self.web.login.methods(),
            }
        )
        control_methods = security.control(routed, admit=self.admission.control)
        dispatcher_methods = security.nodes(
            DISPATCHER_SERVICE,
            self.admission.dispatcher(router.dispatcher(self.dispatcher.methods())),
        )
        # What this manager serves, by service (the API fuzz suites cover each method).
        self.served: dict[str, dict[str, Method]] = {
            CONTROL_SERVICE: control_methods,
            DISPATCHER_SERVICE: dispatcher_methods,
        }
        server.add_generic_rpc_handlers(
            (
                service_handler(CONTROL_SERVICE, control_methods),
                service_handler(DISPATCHER_SERVICE, dispatcher_methods),
                security.certificate_handler(),
            )
        )
        host, _ = split_host_port(settings.listen)
        try:
            port = server.add_secure_port(settings.listen, security.server_credentials())
        except RuntimeError as exc:
            port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if port == 0:
            raise OSError(
                f"cannot listen on {settings.listen}: the address is in use (another shoal "
                "manager or another program listens there) or not this machine's; "
                "choose another with --listen"
            ) from cause
        await server.start()
        self._stack.push_async_callback(server.stop, 1.0)
        self.address = f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        metrics_address = self._serve_metrics()
        if settings.http_listen:
            await self.web.start(
                settings.http_listen,
                security.audited(routed, admit=self.admission.control),
                lambda caller: security.state.is_revoked("user", caller.name, caller.issued_at),
                lambda method, reason, request: denied(method, reason, request, None),
            )
            self._stack.push_async_callback(self.web.aclose)
        self.election.me = self.election.me.model_copy(
            update={
                "address": settings.advertise or self.address,
                "metrics_address": metrics_address,
            }
        )
        self.join_address = await security.serve_join(settings.join_address)
        await self.election.start(self._elected, self._deposed)
        self._stack.push_async_callback(self.election.aclose)

        Gauge(
            "shoal_disruption_guard_engaged",
            "1 while more nodes than the disruption threshold are silent and nothing is "
            "orphaned, else 0.",
            registry=self.registry,
        ).set_function(lambda: float(self.guard().engaged))
        Gauge(
            "shoal_nodes_silent_ratio",
            "Share of the nodes in service that are silent (what the disruption guard judges).",
            registry=self.registry,
        ).set_function(lambda: self.guard().share)
        self._stalls = prometheus_client.Counter(
            "shoal_manager_stall_seconds",
            "Seconds this manager could not receive heartbeats (event loop held, process "
            "paused); node silence is measured without them.",
            registry=self.registry,
        )
        self._start_probe()
        self.registry.register(RestartsCollector(self.restarts))
        self.registry.register(self.events.collector())
        self.registry.register(AdmissionCollector(self.admission))

        endpoint = settings.state_dir / ENDPOINT_FILE
        tmp = endpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": self.address, "pid": os.getpid()}))
        tmp.replace(endpoint)
        self._stack.callback(endpoint.unlink, missing_ok=True)
        self.admin_bundle = await security.write_admin_bundle(
            list(dict.fromkeys([self.election.me.address, *router.manager_addresses()]))
        )
        log.info(
            "manager.started",
            address=self.address,
            join=self.join_address,
            ca=security.ca.digest,
            store=settings.store_url,
            metrics_port=self.metrics_port,
            http=self.web.url,
            nodes=len(self.informer.nodes),
            services=len(self.informer.services),
        )

    def _serve_metrics(self) -> str:
        """Start --metrics-listen (``/metrics``, ``/prometheus/sd``); the address to announce."""
        self.registry.register(
            ClusterCollector(
                self.informer,
                lambda: self.election.is_leader,
                self.heartbeats,
                self.orchestrator.restarts,
            )
        )
        self.registry.register(ElectionCollector(self.election))
        if not self.settings.metrics_listen:
            return ""
        managers = lambda: [self.election.me, *self.election.managers.values()]  # noqa: E731
        listener = serve_metrics(
            self.settings.metrics_listen,
            self.registry,
            {SD_PATH: discovery_route(self.informer, managers)},
        )
        self._stack.callback(listener.close)
        self.metrics_port = listener.port
        advertised_host, _ = split_host_port(self.settings.advertise or self.address)
        return reachable_address(listener.address, advertised_host)

    def _load_data_key(self) -> DataKey:
        settings = self.settings
        path = settings.data_key_file
        if path is None:
            if settings.store_url.startswith("etcd://"):
                raise DataKeyError(
                    "with an etcd store every manager needs the same data key: pass "
                    "--data-key-file FILE (created by the first manager if it does not exist; "
                    "copy it to the others, mode 0600)"
                )
            if settings.store_url.startswith("memory://"):
                return DataKey.generate()
            path = settings.state_dir / DATA_KEY_FILE
        created = not path.exists()
        key = DataKey.load_or_create(path)
        if created:
            log.info("manager.data_key_created", path=str(path), key_id=key.key_id)
        return key

    def _revoked(self, kind: str, name: str) -> None:
        session = self.dispatcher.sessions.get(name) if kind == "node" else None
        if session is not None:
            session.close()

    def _start_probe(self) -> None:
        def on_stall(seconds: float) -> None:
            self._stalls.inc(seconds)
            if seconds >= 0.5:
                log.warning("manager.stalled", seconds=round(seconds, 3))

        probe = asyncio.create_task(probe_stalls(self.heartbeats, on_stall), name="stall-probe")

        def died(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("manager.stall_probe_died", error=repr(task.exception()))
                self._start_probe()

        probe.add_done_callback(died)

        async def stop() -> None:
            probe.remove_done_callback(died)
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

        self._stack.push_async_callback(stop)

    def guard(self) -> GuardState:
        """The disruption guard: the node monitor's own view while leading, else the store's."""
        if self.election.is_leader:
            return self.monitor.guard
        return guard_from_nodes(
            (e.obj for e in list(self.informer.nodes.values())),
            self.settings.disruption_threshold,
        )

    def conditions(self) -> list[dict[str, object]]:
        """Cluster-wide conditions for ``shoal cluster status``, with their recent events."""
        guard = self.guard().to_wire()
        guard["events"] = [e.to_wire() for e in self.events.for_object(CLUSTER_OBJECT)][-5:]
        return [guard]

    def _new_runners(self) -> list[ControllerRunner]:
        period = self.settings.resync_period
        return [
            ControllerRunner(
                c,
                self._loop_metrics,
                period,
                reports=self.reports if c is self.orchestrator else None,
                events=self.events,
            )
            for c in self.controllers
        ]

    async def _elected(self) -> None:
        """This manager leads: catch the cache up, then run the controllers."""
        if not isinstance(self.election, SoleElection):
            # Every write of an earlier term is below our term's revision: see it first.
            await self.informer.catch_up()
        # Agents were with the old leader, or backing off while no manager ran:
        # give them time to find this one.
        self.heartbeats.restart(self.settings.failover - self.settings.grace)
        self.runners = self._new_runners()
        for runner in self.runners:
            runner.start()
        log.info("manager.leading", address=self.address, store=self.settings.store_url)

    async def _deposed(self) -> None:
        """Lost the lead: stop the controllers and agent sessions at once."""
        self.dispatcher.close_sessions()
        await self._stop_runners()
        log.warning("manager.following", address=self.address)

    async def _stop_runners(self) -> None:
        runners, self.runners = self.runners, []
        for runner in runners:
            await runner.aclose()

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
