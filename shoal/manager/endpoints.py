"""The endpoint catalog, derived from the informer (``shoal.discovery.catalog``).

An endpoint is a task that is ``running``, still wanted running, healthy (or
without a health check), on a node that is ready and has an address others can
reach: the node's advertise address and the ports the agent reported
(``status.ports``). Every manager keeps an ``EndpointIndex`` over its own
informer, so any of them answers ``shoal endpoints``; the leader's dispatcher
pushes the changes to the agents on their sessions.

The index is kept up to date on every change the informer applies, at the cost
of a few comparisons per task change; the ``Endpoint`` objects and their wire
form are built only when somebody asks (a session opens, a flush sends the
changed services, a client lists them), once per task and cached until that
task's endpoint changes. A service's wire list is built once per change and
shared by every message that carries it, and a message of changes is encoded
to JSON once (``shoal.api.transport.Encoded``), so sending one change to a
thousand agents encodes it once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from shoal.api.transport import Encoded
from shoal.batching import Flusher
from shoal.discovery.catalog import Endpoint, EndpointPort
from shoal.models import DesiredState, Node, NodeState, Service, Task, TaskState
from shoal.models.task import TaskPort
from shoal.reconciler.informer import Informer
from shoal.reconciler.pacing import Pacer
from shoal.store.typed import Object
from shoal.supervise import supervise

# What makes one task's endpoint: slot, node, address, ports, container address.
Key = tuple[int, str, str, tuple[TaskPort, ...], str | None]
Listener = Callable[[frozenset[str]], None]


def node_address(node: Node) -> str:
    """Where others reach ``node``: its advertise address, else what the manager saw."""
    return node.status.advertise_address or node.description.advertise_address


def endpoint_key(task: Task, node: Node | None) -> Key | None:
    """The task's endpoint if it is one (see the module docstring), else None."""
    if task.desired_state != DesiredState.RUNNING or task.status.state != TaskState.RUNNING:
        return None
    if task.template.healthcheck is not None and task.status.health != "healthy":
        return None
    if node is None or node.status.state != NodeState.READY or task.node_id is None:
        return None
    address = node_address(node)
    if not address:
        return None
    status = task.status
    return (task.slot, task.node_id, address, tuple(status.ports), status.container_address)


def make_endpoint(service: str, task_id: str, key: Key) -> Endpoint:
    slot, node_id, address, ports, container_address = key
    return Endpoint(
        service=service,
        task_id=task_id,
        slot=slot,
        node_id=node_id,
        address=address,
        ports=[
            EndpointPort(name=p.name, port=p.port, protocol=p.protocol, target=p.target)
            for p in ports
        ],
        container_address=container_address,
    )


class EndpointIndex:
    """Each service's endpoints, kept from one informer; see the module docstring.

    Listeners are called with the names of the services whose endpoint list
    changed, a service created (listed, maybe empty) or deleted (``known`` is
    then False).
    """

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._members: dict[str, dict[str, Key]] = defaultdict(dict)  # service → task → key
        self._listed: dict[str, str] = {}  # task id → the service it is listed under
        self._endpoints: dict[str, Endpoint] = {}  # by task id, built when asked
        self._wire: dict[str, list[dict[str, Any]]] = {}  # by service, built when asked
        self._listeners: list[Listener] = []
        informer.subscribe(self._on_change)
        for entry in list(informer.all_tasks()):
            self._update_task(entry.obj.id, entry.obj, set())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # ---------------------------------------------------------------- reading

    def known(self, service: str) -> bool:
        return service in self.informer.services

    def endpoints(self, service: str) -> list[Endpoint] | None:
        """The service's endpoints by slot; None for a service that does not exist."""
        if not self.known(service):
            return None
        members = self._members.get(service, {})
        return [self._endpoint(service, t) for t in sorted(members, key=self._order(members))]

    def wire(self, service: str) -> list[dict[str, Any]]:
        """The service's endpoints in wire form (cached; do not modify)."""
        cached = self._wire.get(service)
        if cached is None:
            cached = [e.to_wire() for e in self.endpoints(service) or ()]
            self._wire[service] = cached
        return cached

    def full_message(self) -> dict[str, Any]:
        """Every service, each with its complete list (``shoal.discovery.catalog``)."""
        services = sorted(self.informer.services)
        return {
            "type": "endpoints",
            "full": True,
            "services": {name: self.wire(name) for name in services},
        }

    def changes_message(self, names: Iterable[str]) -> dict[str, Any] | None:
        """The incremental message for the services ``names`` (None: nothing to say)."""
        names = sorted(set(names))
        if not names:
            return None
        message: dict[str, Any] = {
            "type": "endpoints",
            "full": False,
            "services": {n: self.wire(n) for n in names if self.known(n)},
        }
        removed = [n for n in names if not self.known(n)]
        if removed:
            message["removed"] = removed
        return message

    # ---------------------------------------------------------------- keeping

    def _on_change(self, old: Object | None, new: Object | None) -> None:
        changed: set[str] = set()
        if isinstance(new, Task) or isinstance(old, Task):
            task = new if isinstance(new, Task) else old
            assert isinstance(task, Task)
            self._update_task(task.id, new if isinstance(new, Task) else None, changed)
        elif isinstance(new, Node) or isinstance(old, Node):
            node = new if isinstance(new, Node) else old
            assert isinstance(node, Node)
            before = (old.status.state, node_address(old)) if isinstance(old, Node) else None
            after = (new.status.state, node_address(new)) if isinstance(new, Node) else None
            if before != after:
                for entry in self.informer.tasks_on_node(node.id):
                    self._update_task(entry.obj.id, entry.obj, changed)
        elif isinstance(new, Service) != isinstance(old, Service):  # created or deleted
            service = new if isinstance(new, Service) else old
            assert isinstance(service, Service)
            name = service.metadata.name
            self._wire.pop(name, None)
            changed.add(name)
        self._tell(changed)

    def _update_task(self, task_id: str, task: Task | None, changed: set[str]) -> None:
        key = None
        if task is not None and task.node_id is not None:
            entry = self.informer.nodes.get(task.node_id)
            key = endpoint_key(task, entry.obj if entry else None)
        listed = self._listed.get(task_id)
        if listed is not None and (key is None or task is None or listed != task.service):
            del self._members[listed][task_id]
            if not self._members[listed]:
                del self._members[listed]
            del self._listed[task_id]
            self._forget(listed, task_id, changed)
        if key is None or task is None:
            return
        members = self._members[task.service]
        if members.get(task_id) != key:
            members[task_id] = key
            self._listed[task_id] = task.service
            self._forget(task.service, task_id, changed)

    def _forget(self, service: str, task_id: str, changed: set[str]) -> None:
        self._endpoints.pop(task_id, None)
        self._wire.pop(service, None)
        changed.add(service)

    def _endpoint(self, service: str, task_id: str) -> Endpoint:
        endpoint = self._endpoints.get(task_id)
        if endpoint is None:
            endpoint = make_endpoint(service, task_id, self._members[service][task_id])
            self._endpoints[task_id] = endpoint
        return endpoint

    @staticmethod
    def _order(members: dict[str, Key]) -> Callable[[str], tuple[int, str, str]]:
        return lambda task_id: (members[task_id][0], members[task_id][1], task_id)

    def _tell(self, changed: set[str]) -> None:
        if not changed:
            return
        names = frozenset(changed)
        for listener in list(self._listeners):
            listener(names)


class Recipient(Protocol):
    """An agent session as the push sees it (``shoal.manager.dispatcher.AgentSession``)."""

    closed: bool
    # Whether the session was sent the full catalog, so changes follow it.
    catalog_ready: bool

    def send(self, message: dict[str, Any]) -> None: ...


class EndpointPush:
    """Sends the index's changes to every session that took the catalog.

    Changes are coalesced by a ``Flusher``; each flush builds one message for the
    services that changed, from the index's cached wire lists, and gives the same
    message to every session. With no session that wants the catalog (simulated
    fleets opt out), a change costs nothing but the index's own bookkeeping.
    """

    def __init__(
        self,
        index: EndpointIndex,
        recipients: Callable[[], Iterable[Recipient]],
        restarts: Counter[str] | None = None,
    ) -> None:
        self.index = index
        self.restarts: Counter[str] = restarts if restarts is not None else Counter()
        self._recipients = recipients
        self._dirty: set[str] = set()
        self._flusher = Flusher()
        self._job: asyncio.Task[None] | None = None
        self.messages = 0  # sent, counting each session (tests, metrics)
        index.subscribe(self._changed)

    def start(self) -> None:
        """Run the flusher (again, if it ended); called as sessions open."""
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(
                supervise("endpoint-push", lambda _: self._flusher.run(self._flush), self.restarts),
                name="endpoint-push",
            )

    async def aclose(self) -> None:
        if self._job is not None:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job

    def full(self, session: Recipient) -> dict[str, Any]:
        """The first catalog message of ``session``; the changes after it follow."""
        session.catalog_ready = True
        return self.index.full_message()

    def _changed(self, names: frozenset[str]) -> None:
        if self._job is None:
            return  # no session took the catalog yet: the first one gets it in full
        self._dirty |= names
        self._flusher.poke()

    async def _flush(self) -> None:
        names, self._dirty = self._dirty, set()
        sessions = [s for s in self._recipients() if s.catalog_ready and not s.closed]
        if not sessions:
            return  # whoever opens a session later gets the full catalog
        changes = self.index.changes_message(names)
        if changes is None:
            return
        message = Encoded(changes)  # one encoding for every session
        pace = Pacer()
        for session in sessions:
            session.send(message)
            self.messages += 1
            await pace()
