"""The client side of the Control service, used by the CLI and by tests.

Each method wraps one Control RPC and returns the payload in its wire shape
(camelCase dicts, as ``shoal.manager.control`` documents them): the CLI prints
those dicts as they are for ``-o json|yaml``, and reading them keeps a newer
client usable against an older manager (an unknown field is not an error here).

Finding the manager and the credentials to show it is resolved in one place
(``shoal.security.contexts.resolve``): ``--context``, a local ``shoal up``'s
admin bundle, the config file's current context; ``--server``/``$SHOAL_SERVER``
(comma lists) override the addresses. ``open_control`` tries each address in
turn, giving each ``CONNECT_TIMEOUT`` to complete its TLS handshake, so a
manager that is down or paused costs seconds, not a hung command; when none
answers, the ``ApiError("UNAVAILABLE", ...)`` says which were tried, what
happened at each and what to check. A store outage on a reachable manager also
arrives as UNAVAILABLE, but from the server, with its own message.
"""

from __future__ import annotations

import base64
import contextlib
import json

from shoal.api.wire import CONTROL_SERVICE, Payload
from shoal.errors import ApiError
from shoal.security.contexts import Context, CredentialsError, resolve

TYPE_CHECKING = False  # not from typing: every command loads this module
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
    from typing import Any, Protocol, TypeVar

    from shoal.api.unary import UnaryConnection
    from shoal.models import Service
    from shoal.models.secret import ConfigDocument
    from shoal.models.sync import Sync

    T = TypeVar("T")

    class Transport(Protocol):
        """How a ``ControlClient`` reaches its manager: grpc.aio (``shoal.api.channels``)
        or the CLI's unary client (``UnaryTransport``). Errors come as ``ApiError``."""

        async def call(self, method: str, request: Payload, timeout: float | None) -> Payload: ...

        def stream(self, method: str, request: Payload) -> AsyncIterator[Payload]: ...


UNAVAILABLE = "UNAVAILABLE"


CONNECT_TIMEOUT = 3.0


def unreachable_message(tried: list[tuple[str, str]]) -> str:
    attempts = "; ".join(f"{address} ({why})" for address, why in tried)
    return (
        f"cannot reach a shoal manager: tried {attempts}. Check that a manager runs there "
        "(`shoal up` or `shoal manager`) and that these credentials are for its cluster, "
        "or pick others with --server, --context or `shoal context use`"
    )


def _jsonable(value: Any) -> str:
    """What JSON lacks, as the manager reads it: YAML's dates and times (from a spec)."""
    if type(value).__name__ in ("date", "datetime") and hasattr(value, "isoformat"):
        return str(value.isoformat())  # datetime's, which this module does not import
    raise ApiError(
        "INVALID_ARGUMENT",
        f"a {type(value).__name__} value cannot be sent: write it as a string in the YAML",
    )


class UnaryTransport:
    """Unary calls on a blocking ``UnaryConnection``: each ``call`` coroutine finishes
    without ever suspending, so ``complete`` runs it without an event loop.
    Streaming methods need grpc.aio (``open_control``)."""

    def __init__(self, connection: UnaryConnection) -> None:
        self._connection = connection

    async def call(self, method: str, request: Payload, timeout: float | None) -> Payload:
        from shoal.api.unary import ConnectionLost

        message = json.dumps(request, separators=(",", ":"), default=_jsonable).encode()
        try:
            reply = self._connection.call(f"/{CONTROL_SERVICE}/{method}", message, timeout)
        except ConnectionLost as exc:
            lost = [(self._connection.address, "connection lost")]
            raise ApiError(UNAVAILABLE, unreachable_message(lost)) from exc
        value = json.loads(reply)
        if not isinstance(value, dict):
            raise ApiError("INTERNAL", f"{method}: the answer is not a JSON object")
        return value

    def stream(self, method: str, request: Payload) -> AsyncIterator[Payload]:
        raise RuntimeError(f"{method} streams: open the client with open_control, not connect")


class ControlClient:
    """Typed calls to the Control service of one manager."""

    def __init__(self, transport: Transport, address: str) -> None:
        self.address = address
        self._transport = transport

    async def _call(self, method: str, request: Payload, timeout: float | None = 30.0) -> Payload:
        return await self._transport.call(method, request, timeout)

    async def apply(
        self,
        documents: Sequence[Service | Sync | ConfigDocument],
        dry_run: bool = False,
        apply_set: Mapping[str, Any] | None = None,
        cause: str = "",
    ) -> Payload:
        """``apply_data`` of models (configs go as ``configs``)."""
        return await self.apply_data(
            [d.to_wire() for d in documents if d.kind != "Config"],
            [d.to_wire() for d in documents if d.kind == "Config"],
            dry_run=dry_run,
            apply_set=apply_set,
            cause=cause,
        )

    async def apply_data(
        self,
        documents: Sequence[Payload],
        configs: Sequence[Payload] = (),
        dry_run: bool = False,
        apply_set: Mapping[str, Any] | None = None,
        cause: str = "",
        locate: bool = False,
    ) -> Payload:
        """``{"results": [{"kind", "name", "action", "changed", "revision", "warnings"}],
        "dryRun", "revision"}``; action is ``created``, ``configured``, ``unchanged`` or
        ``pruned``; a service's ``revision`` is its template revision, and ``cause`` is
        recorded with a new one. ``apply_set``: ``{"set", "prune", "allowEmpty",
        "source"}``. ``documents`` (Services, Syncs) and ``configs`` (``kind: Config``)
        in wire form, validated by the manager. ``locate``: documents that do not
        validate are answered with ``problems`` (and nothing applied) instead of
        INVALID_ARGUMENT (``shoal.manager.control.locate_problems``)."""
        request: Payload = {
            "documents": list(documents),
            "dryRun": dry_run,
            "cause": cause,
            **(apply_set or {}),
        }
        if configs:
            request["configs"] = list(configs)
        if locate:
            request["locate"] = True
        return await self._call("Apply", request)

    async def apply_set(self, name: str) -> Payload | None:
        """What apply set ``name`` owns (``{name, members, source, revision}``), None if none."""
        response = await self._call("GetApplySet", {"name": name})
        found: Payload | None = response.get("set")
        return found

    async def create_file(
        self,
        kind: str,
        name: str,
        data: bytes,
        labels: Mapping[str, str] | None = None,
        if_same: bool = False,
    ) -> Payload:
        """Create a secret or config (``kind``); answers ``{kind: view}``, never the bytes.

        ``if_same``: one that exists with these very bytes is no error (the answer
        then has ``unchanged: true``); different bytes still are."""
        request = {
            "name": name,
            "data": base64.b64encode(data).decode(),
            "labels": dict(labels or {}),
            "ifSame": if_same,
        }
        return await self._call(f"Create{kind.capitalize()}", request)

    async def get_files(self, kind: str, name: str | None = None) -> list[Payload]:
        """Secrets or configs: ``{metadata, size, usedBy}`` each (their bytes never)."""
        request: Payload = {} if name is None else {"name": name}
        response = await self._call(f"Get{kind.capitalize()}s", request)
        items: list[Payload] = response.get("items", [])
        return items

    async def remove_files(self, kind: str, names: Sequence[str]) -> Payload:
        """Refused (ABORTED) while a service uses one of them; NOT_FOUND names the missing."""
        return await self._call(f"Remove{kind.capitalize()}", {"names": list(names)})

    async def get(
        self,
        kind: str,
        name: str | None = None,
        service: str | None = None,
        all_tasks: bool = False,
        selector: str | None = None,
    ) -> list[Payload]:
        """The items of ``kind`` (services, tasks, nodes, syncs); ``service`` and
        ``all_tasks`` filter tasks (``all_tasks`` includes finished history);
        ``selector`` (``app=web,tier!=db``) filters by labels, a task by its service's.
        Tasks come in one answer, which a manager refuses past ~10,000 (``get_page``)."""
        response = await self.get_page(kind, name, service, all_tasks, selector)
        items: list[Payload] = response.get("items", [])
        return items

    async def get_page(
        self,
        kind: str,
        name: str | None = None,
        service: str | None = None,
        all_tasks: bool = False,
        selector: str | None = None,
        limit: int | None = None,
        token: str | None = None,
    ) -> Payload:
        """``Get``'s whole answer: ``{"items", "revision"}`` and, for tasks asked with
        ``limit`` (at most that many per page), ``remaining`` and, while tasks remain,
        ``continue``: the ``token`` of the next page (``shoal.manager.taskpages``). A
        manager older than paging answers every task at once, without ``continue``."""
        request: Payload = {"kind": kind}
        if selector:
            request["selector"] = selector
        if name is not None:
            request["name"] = name
        if service is not None:
            request["service"] = service
        if all_tasks:
            request["all"] = True
        if limit is not None:
            request["limit"] = limit
        if token:
            request["continue"] = token
        return await self._call("Get", request)

    async def describe(self, kind: str, name: str) -> Payload:
        """Services: ``{service, tasks, notes, events}``; nodes: ``{node, tasks, events}``."""
        return await self._call("Describe", {"kind": kind, "name": name})

    async def delete(
        self, names: Sequence[str], ignore_not_found: bool = False, selector: str | None = None
    ) -> Payload:
        """``{"deleted": [...], "missing": [...]}``; missing names are an error
        (NOT_FOUND, nothing deleted) unless ``ignore_not_found``. With ``selector``
        (and no names) every service it matches is deleted."""
        request: Payload = {
            "kind": "services",
            "names": list(names),
            "ignoreNotFound": ignore_not_found,
        }
        if selector:
            request["selector"] = selector
        return await self._call("Delete", request)

    async def rollout(self, name: str, action: str, to_revision: int | None = None) -> Payload:
        """``undo|pause|resume|promote|restart``: ``{"name", "state", "revision", "message"}``."""
        request: Payload = {"name": name, "action": action}
        if to_revision is not None:
            request["toRevision"] = to_revision
        return await self._call("Rollout", request)

    async def run_job(self, name: str) -> Payload:
        """Start a run of job ``name`` now: ``{"name", "requestedAt"}``."""
        return await self._call("RunJob", {"name": name})

    async def scale(self, replicas: Mapping[str, int]) -> dict[str, int]:
        response = await self._call("Scale", {"replicas": dict(replicas)})
        scaled: dict[str, int] = response.get("scaled", {})
        return scaled

    async def update_node(
        self,
        name: str,
        availability: str | None = None,
        label_add: Mapping[str, str] | None = None,
        label_remove: Sequence[str] = (),
    ) -> Payload:
        """The node as it is after the update."""
        request: Payload = {
            "name": name,
            "labelAdd": dict(label_add or {}),
            "labelRemove": list(label_remove),
        }
        if availability:
            request["availability"] = availability
        response = await self._call("UpdateNode", request)
        node: Payload = response["node"]
        return node

    async def logs(
        self,
        service: str | None = None,
        follow: bool = False,
        tail: int | None = None,
        *,
        task: str | None = None,
        selector: str | None = None,
        since: str | None = None,
    ) -> AsyncIterator[Payload]:
        """``{"taskId", "task", "line", "time"}`` items of one ``service``, one ``task``
        (id, unique id prefix or name) or the services a ``selector`` matches, in time
        order, from ``since`` (``10m`` or RFC 3339) on; ends when every task's log has
        been sent, or never with ``follow`` (cancel to stop)."""
        request: Payload = {"follow": follow}
        fields = (("service", service), ("task", task), ("selector", selector), ("since", since))
        for field, value in fields:
            if value:
                request[field] = value
        if tail is not None:
            request["tail"] = tail
        async for item in self._transport.stream("Logs", request):
            yield item

    async def events(self, request: Payload) -> Payload:
        """``{events, cursor}``: kept events matching ``request``'s filters (see eventsapi)."""
        return await self._call("Events", request)

    async def stream(self, method: str, request: Payload) -> AsyncIterator[Payload]:
        """A server-streaming method by name (``WatchEvents``, ``Backup``)."""
        async for item in self._transport.stream(method, request):
            yield item

    async def sync_now(self, name: str) -> str:
        """Ask for a run of Sync ``name``; the ``requestedAt`` stamp its status will echo
        as ``lastHandledRequest`` once the run is done."""
        response = await self._call("SyncNow", {"name": name})
        return str(response["requestedAt"])

    async def sync_suspend(self, name: str, suspend: bool) -> bool:
        """Suspend or resume Sync ``name``; False when it already was."""
        response = await self._call("SyncSuspend", {"name": name, "suspend": suspend})
        return bool(response.get("changed"))

    async def delete_sync(self, name: str) -> list[str]:
        """Delete Sync ``name``; returns the services it leaves running (``service/x``)."""
        response = await self._call("SyncDelete", {"name": name})
        return [str(ref) for ref in response.get("kept", [])]

    async def describe_sync(self, name: str) -> Payload:
        """``{sync, set, events}``: the Sync, the apply set it owns, the leader's events."""
        return await self._call("DescribeSync", {"name": name})

    async def token(self, role: str = "worker", rotate: bool = False) -> str:
        response = await self._call("Token", {"role": role, "rotate": rotate})
        return str(response["token"])

    async def call(self, method: str, request: Payload, timeout: float | None = 30.0) -> Payload:
        """Any Control method by name (the identity verbs use this)."""
        return await self._call(method, request, timeout)

    async def cluster_status(self) -> Payload:
        """``{managers: [{id, address, leader, self, startedAt}], leader, answeredBy,
        electionError, store: {url, endpoints: [{endpoint, healthy, detail, ...}]}}``."""
        return await self._call("ClusterStatus", {}, timeout=15.0)

    async def version(self) -> str:
        response = await self._call("Version", {}, timeout=10.0)
        return str(response.get("version", "unknown"))


def _target(server: str | None, context: str | None) -> Context:
    try:
        return resolve(server, context)
    except CredentialsError as exc:
        raise ApiError("UNAUTHENTICATED", str(exc)) from exc


@contextlib.asynccontextmanager
async def open_control(
    server: str | None = None, context: str | None = None
) -> AsyncIterator[ControlClient]:
    """A ``ControlClient`` on grpc.aio to the first manager that answers, closed on exit:
    for streaming calls and commands that wait on an event loop.

    ``server`` is an address or a comma list; ``context`` a context name (see
    ``shoal.security.contexts.resolve``).
    """
    from shoal.api.channels import open_grpc
    from shoal.api.unary import tls_context

    target = _target(server, context)
    # grpc takes any bytes and only fails the handshake: unusable PEM is said as the
    # unary client says it (UNAUTHENTICATED), not as a manager that cannot be reached.
    tls_context(target)
    async with open_grpc(target, target.servers, CONNECT_TIMEOUT) as transport:
        yield ControlClient(transport, transport.address)


@contextlib.contextmanager
def connect(server: str | None = None, context: str | None = None) -> Iterator[ControlClient]:
    """A ``ControlClient`` for unary calls on the CLI's own client (``shoal.api.unary``:
    neither grpc nor asyncio is imported), to the first manager that answers, the
    same way ``open_control`` picks one; run its calls with ``complete``."""
    from shoal.api.unary import ConnectError, UnaryConnection, tls_context

    target = _target(server, context)
    tls = tls_context(target)
    tried: list[tuple[str, str]] = []
    for address in target.servers:
        try:
            connection = UnaryConnection.open(address, tls, CONNECT_TIMEOUT)
        except ConnectError as exc:
            tried.append((address, str(exc)))
            continue
        try:
            yield ControlClient(UnaryTransport(connection), address)
        finally:
            connection.close()
        return
    raise ApiError(UNAVAILABLE, unreachable_message(tried))


def complete(work: Awaitable[T]) -> T:
    """The result of ``work``, a coroutine of unary calls on a client from ``connect``.

    Those calls block and never suspend, so the coroutine runs to its end in one
    step and no event loop is needed; one that does suspend (a sleep, a stream)
    is a bug in its caller, who should have used ``open_control``.
    """
    steps = work.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    steps.close()
    raise RuntimeError("this work waits on an event loop: run it on open_control")


def run_unary(
    server: str | None, context: str | None, work: Callable[[ControlClient], Awaitable[T]]
) -> T:
    """``work`` on a client from ``connect``, completed (see ``complete``)."""
    with connect(server, context) as control:
        return complete(work(control))
