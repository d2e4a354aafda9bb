"""The etcd store: the contract on an etcd v3 cluster, for several managers.

``etcd://HOST:PORT[,HOST:PORT...]/PREFIX`` names the members and a key prefix;
every shoal key lives under ``/PREFIX`` so one etcd cluster can hold several
shoal clusters (or other tenants). etcd's Raft does the replication; this
module only speaks its v3 API through the stubs ``aetcd`` generates, on a gRPC
channel of our own.

Reaching several members: the channel's target lists every member
(``ipv4:10.0.0.1:2379,10.0.0.2:2379``) with gRPC's ``pick_first`` policy, so
when the member we talk to dies the channel connects to the next live one.
Calls wait for a ready connection (``wait_for_ready``) within their deadline,
so a call made between two members is not lost. A call *in flight* when the
connection breaks fails, and then:

* reads (``get``, ``range``, ``revision``, lease keep-alives) are idempotent
  and are retried until their deadline;
* writes (``txn`` and everything built on it, ``grant_lease``) are never
  retried: their outcome is unknown (etcd documents the same for timeouts),
  so they raise ``StoreUnavailableError`` saying so, and the caller decides
  (shoal's writes compare on revisions, so re-reading and redoing is safe).

Watches are one gRPC stream each. The iterator remembers the last revision it
delivered and, when the stream breaks (member died, member lost its leader:
streams are opened with etcd's "require leader" flag so an isolated member
cancels them instead of going silent), opens a new one from the next revision
on whichever member the channel reaches. If that revision has been compacted
meanwhile it raises ``CompactedError`` and the caller relists.

Differences from the embedded stores, all allowed by the contract: revisions
are etcd's global revision (writes by others, under other prefixes, advance it
too), lease TTLs are whole seconds and at least etcd's minimum, expiry is
checked by the etcd leader every 500 ms, and ``compact`` compacts the whole
etcd keyspace.

Members need no special flags: the store declares etcd's default limits
(``max_txn_ops`` 128, ``--max-request-bytes`` 1.5 MiB, of which it plans for
1 MiB of keys and values to leave room for the framing), and shoal splits
large passes into transactions within them (``TypedStore.commit_in_chunks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import math
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
from aetcd import rpc

from shoal.errors import (
    CompactedError,
    NotFoundError,
    ShoalError,
    StoreError,
    StoreUnavailableError,
)
from shoal.store.base import (
    Compare,
    Delete,
    EndpointHealth,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    Store,
    TxnResult,
    validate_compares,
    validate_ops,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
_PAGE = 1000  # keys per range request; pages share one revision
# etcd's defaults for --max-txn-ops and (part of) --max-request-bytes.
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1024 * 1024
_MAX_MESSAGE = 256 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.lb_policy_name", "pick_first"),
]
_REQUIRE_LEADER = (("hasleader", "true"),)
_OPS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}
_TARGETS = {
    "mod_revision": rpc.Compare.MOD,
    "create_revision": rpc.Compare.CREATE,
    "version": rpc.Compare.VERSION,
    "value": rpc.Compare.VALUE,
}
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
}


@dataclass(frozen=True)
class EtcdTLS:
    """Client TLS for etcd: the CA that signed the members' certificates, and the
    client certificate and key etcd's ``--client-cert-auth`` asks for."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise StoreUnavailableError(f"cannot read the etcd {what} {path}: {exc.strerror}") from exc


def parse_etcd_tls(url: str) -> EtcdTLS | None:
    """TLS settings from the URL's query: ``?ca=FILE&cert=FILE&key=FILE[&server-name=N]``."""
    _, _, query = url.partition("?")
    if not query:
        return None
    options = dict(urllib.parse.parse_qsl(query, strict_parsing=False))
    unknown = sorted(set(options) - {"ca", "cert", "key", "server-name"})
    if unknown:
        raise ValueError(
            f"unknown etcd URL option(s) {', '.join(unknown)} in {url!r}: "
            "use ?ca=FILE&cert=FILE&key=FILE[&server-name=NAME]"
        )
    if "ca" not in options:
        raise ValueError(f"etcd TLS needs ?ca=FILE (the CA of the members) in {url!r}")
    if ("cert" in options) != ("key" in options):
        raise ValueError(f"etcd client TLS needs both cert= and key= in {url!r}")
    return EtcdTLS(
        ca=_read(options["ca"], "CA"),
        cert=_read(options["cert"], "client certificate") if "cert" in options else None,
        key=_read(options["key"], "client key") if "key" in options else None,
        server_name=options.get("server-name"),
    )


def parse_etcd_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://h1:p1,h2:p2/prefix[?tls options]`` → ([(h1, p1), (h2, p2)], "/prefix")."""
    url = url.partition("?")[0]
    scheme, sep, rest = url.partition("://")
    if scheme != "etcd" or not sep:
        raise ValueError(f"not an etcd URL: {url!r}")
    hosts, _, prefix = rest.partition("/")
    endpoints: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"bad etcd endpoint {item!r} in {url!r}: use etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
            )
        endpoints.append((host.strip("[]"), int(port)))
    prefix = prefix.strip("/")
    return endpoints, f"/{prefix}" if prefix else ""


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    data = bytearray(prefix)
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"  # with key b"\0": the whole keyspace
    data[-1] += 1
    return bytes(data)


async def _grpc_target(endpoints: list[tuple[str, int]]) -> str:
    """One gRPC target naming every member, so the channel can move between them."""
    loop = asyncio.get_running_loop()
    v4: list[str] = []
    v6: list[str] = []
    for host, port in endpoints:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise StoreUnavailableError(f"cannot resolve etcd host {host!r}: {exc}") from exc
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in dict.fromkeys(addresses):
            if address.version == 4:
                v4.append(f"{address}:{port}")
            else:
                v6.append(f"[{address}]:{port}")
    if v4:
        return "ipv4:" + ",".join(v4)
    return "ipv6:" + ",".join(v6)


class EtcdStore(Store):
    """The store contract on an etcd v3 cluster, keys under one prefix."""

    def __init__(
        self,
        url: str,
        endpoints: list[tuple[str, int]],
        prefix: str,
        target: str,
        timeout: float = DEFAULT_TIMEOUT,
        tls: EtcdTLS | None = None,
    ) -> None:
        """Not connected yet: use ``await EtcdStore.open(url)``."""
        self.url = url
        self.endpoints = [f"{host}:{port}" for host, port in endpoints]
        self.prefix = prefix
        self.timeout = timeout
        self.max_txn_ops = MAX_TXN_OPS
        self.max_txn_bytes = MAX_TXN_BYTES
        self._ns = prefix.encode()
        self._tls = tls
        # Members are verified by the name in the URL (its first host), or server-name=.
        self._tls_name = (tls.server_name if tls else None) or endpoints[0][0]
        self._target = target
        self._channel = self._open_channel(target)
        self._kv = rpc.KVStub(self._channel)
        self._leases = rpc.LeaseStub(self._channel)
        self._watches = rpc.WatchStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)
        self._streams: set[Any] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> EtcdStore:
        """Connect to the cluster ``url`` names; fails if no member answers within ``timeout``."""
        endpoints, prefix = parse_etcd_url(url)
        tls = parse_etcd_tls(url)
        store = cls(url, endpoints, prefix, await _grpc_target(endpoints), timeout, tls)
        try:
            await store.revision()
        except BaseException:
            await store.aclose()
            raise
        return store

    def _open_channel(self, target: str) -> grpc.aio.Channel:
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self._tls_name)]
        return grpc.aio.secure_channel(target, self._tls.credentials(), options=options)

    # -- keys and errors -----------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._ns + key.encode()

    def _range_of(self, prefix: str) -> tuple[bytes, bytes]:
        start = self._key(prefix)
        if not start:
            return b"\0", b"\0"
        return start, prefix_end(start)

    def _kv_of(self, kv: Any) -> KeyValue:
        return KeyValue(
            key=bytes(kv.key)[len(self._ns) :].decode(),
            value=bytes(kv.value),
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            version=kv.version,
            lease=kv.lease,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"{self.url} is closed")

    def _error(self, exc: grpc.RpcError, what: str, write: bool) -> ShoalError:
        """Map an etcd/gRPC failure to the most specific shoal error."""
        code = exc.code()
        details = exc.details() or code.name
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return NotFoundError(f"the lease does not exist or has expired ({details})")
        where = f"etcd ({', '.join(self.endpoints)})"
        unknown = " (the write may or may not have been applied)" if write else ""
        if self._closed:
            return StoreUnavailableError(f"{self.url} is closed")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED or "deadline exceeded" in details:
            return StoreUnavailableError(
                f"{where} did not answer {what} within {self.timeout:g}s: is a quorum of its "
                f"members up?{unknown}"
            )
        if "no leader" in details or "leader changed" in details:
            return StoreUnavailableError(
                f"{where} has no leader, so it cannot serve {what}: a quorum of its members is "
                f"unreachable ({details}){unknown}"
            )
        if "request timed out" in details:
            return StoreUnavailableError(
                f"{where} timed out on {what}: its members cannot reach a quorum "
                f"({details}){unknown}"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return StoreUnavailableError(f"{where} refused {what}: {details}")
        if "too many operations" in details or "request is too large" in details:
            return StoreError(
                f"{where} refused {what}: {details} (its members run with limits below "
                f"etcd's defaults of --max-txn-ops {MAX_TXN_OPS} and --max-request-bytes 1.5 MiB)"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return StoreUnavailableError(f"{where} is unreachable for {what}: {details}{unknown}")
        return StoreUnavailableError(f"{where} failed {what}: {code.name}: {details}{unknown}")

    async def _read(self, what: str, call: Callable[[float], Awaitable[T]]) -> T:
        """An idempotent call, retried on connection errors until the deadline."""
        self._check_open()
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await call(max(remaining, 0.01))
            except grpc.aio.AioRpcError as exc:
                if (
                    self._closed
                    or exc.code() not in _RETRYABLE
                    or time.monotonic() + delay >= deadline
                ):
                    raise self._error(exc, what, write=False) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _write(self, what: str, call: Callable[[float], Awaitable[T]]) -> T:
        """A non-idempotent call: one attempt, an unknown outcome is reported as such."""
        self._check_open()
        try:
            return await call(self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, what, write=True) from exc

    # -- reads ---------------------------------------------------------------

    async def _range(self, request: Any, timeout: float) -> Any:
        return await self._kv.Range(request, timeout=timeout, wait_for_ready=True)

    async def get(self, key: str) -> KeyValue | None:
        request = rpc.RangeRequest(key=self._key(key))
        response = await self._read("a read", functools.partial(self._range, request))
        return self._kv_of(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        start, end = self._range_of(prefix)
        kvs: list[KeyValue] = []
        revision = 0  # the first page's revision; later pages read at it
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=_PAGE, revision=revision)
            try:
                response = await self._read("a range read", functools.partial(self._range, request))
            except StoreUnavailableError as exc:
                if revision and "compacted" in str(exc):
                    kvs, revision = [], 0  # compacted between pages: start again
                    start, end = self._range_of(prefix)
                    continue
                raise
            revision = revision or response.header.revision
            kvs.extend(self._kv_of(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return kvs, revision
            start = bytes(response.kvs[-1].key) + b"\0"

    async def revision(self) -> int:
        request = rpc.RangeRequest(key=self._ns or b"\0", count_only=True)
        response = await self._read("a read", functools.partial(self._range, request))
        return int(response.header.revision)

    # -- writes --------------------------------------------------------------

    def _compare(self, compare: Compare) -> Any:
        message = rpc.Compare(
            result=_OPS[compare.op], target=_TARGETS[compare.target], key=self._key(compare.key)
        )
        if compare.target == "value":
            message.value = compare.value
        elif compare.target == "mod_revision":
            message.mod_revision = compare.value
        elif compare.target == "create_revision":
            message.create_revision = compare.value
        else:
            message.version = compare.value
        return message

    def _op(self, op: Op) -> Any:
        if isinstance(op, Put):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(key=self._key(op.key), value=op.value, lease=op.lease)
            )
        if op.prefix:
            start, end = self._range_of(op.key)
        else:
            start, end = self._key(op.key), b""
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=start, range_end=end))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        validate_compares(compares)
        validate_ops(success)
        validate_ops(failure)
        request = rpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._op(op) for op in success],
            failure=[self._op(op) for op in failure],
        )
        response = await self._write(
            "a transaction",
            lambda timeout: self._kv.Txn(request, timeout=timeout, wait_for_ready=True),
        )
        ops = success if response.succeeded else failure
        deleted = [
            int(item.response_delete_range.deleted) if isinstance(op, Delete) else 0
            for op, item in zip(ops, response.responses, strict=True)
        ]
        return TxnResult(bool(response.succeeded), int(response.header.revision), deleted)

    async def compact(self, revision: int) -> None:
        current = await self.revision()
        request = rpc.CompactionRequest(revision=min(revision, current))
        try:
            await self._write(
                "a compaction",
                lambda timeout: self._kv.Compact(request, timeout=timeout, wait_for_ready=True),
            )
        except StoreUnavailableError as exc:
            if "has been compacted" not in str(exc):
                raise

    # -- watches -------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        self._check_open()
        key, end = self._range_of(prefix)
        cursor = max(start_revision, 1)
        delay = 0.05
        while not self._closed:
            stream = self._watches.Watch(metadata=_REQUIRE_LEADER, wait_for_ready=True)
            self._streams.add(stream)
            try:
                create = rpc.WatchCreateRequest(key=key, range_end=end, start_revision=cursor)
                await stream.write(rpc.WatchRequest(create_request=create))
                while True:
                    try:
                        response = await stream.read()
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if self._closed and task is not None and not task.cancelling():
                            return  # aclose() cancelled the stream: the watch ends
                        raise
                    if response is grpc.aio.EOF:
                        break
                    if response.compact_revision:
                        raise CompactedError(cursor, response.compact_revision - 1)
                    if response.canceled:
                        log.info("etcd.watch_canceled", reason=response.cancel_reason)
                        break
                    delay = 0.05
                    for batch in self._batches(response.events):
                        cursor = batch[0].kv.mod_revision + 1
                        yield batch
            except grpc.aio.AioRpcError as exc:
                if self._closed:
                    return
                # Once per outage at warning level; the retries after it at debug.
                (log.warning if delay == 0.05 else log.debug)(
                    "etcd.watch_interrupted",
                    resume_from=cursor,
                    error=str(self._error(exc, "a watch", write=False)),
                )
            finally:
                stream.cancel()
                self._streams.discard(stream)
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _batches(self, events: Sequence[Any]) -> list[list[Event]]:
        """etcd events, one batch per revision (a response may hold several)."""
        batches: list[list[Event]] = []
        last = 0
        for raw in events:
            kv = raw.kv
            if raw.type == rpc.Event.DELETE:
                key = bytes(kv.key)[len(self._ns) :].decode()
                event = Event(EventType.DELETE, KeyValue(key, b"", 0, kv.mod_revision, 0))
            else:
                event = Event(EventType.PUT, self._kv_of(kv))
            if kv.mod_revision != last:
                batches.append([])
                last = kv.mod_revision
            batches[-1].append(event)
        return batches

    # -- leases --------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        if ttl <= 0:
            raise ValueError("a lease ttl must be positive")
        request = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = await self._write(
            "a lease grant",
            lambda timeout: self._leases.LeaseGrant(request, timeout=timeout, wait_for_ready=True),
        )
        if response.error:
            raise StoreUnavailableError(f"etcd refused a lease: {response.error}")
        return int(response.ID)

    async def keepalive(self, lease: int) -> None:
        async def once(timeout: float) -> Any:
            stream = self._leases.LeaseKeepAlive(timeout=timeout, wait_for_ready=True)
            try:
                await stream.write(rpc.LeaseKeepAliveRequest(ID=lease))
                return await stream.read()
            finally:
                stream.cancel()

        response = await self._read("a lease keep-alive", once)
        if response is grpc.aio.EOF:
            raise StoreUnavailableError(f"etcd ({', '.join(self.endpoints)}) closed a keep-alive")
        if response.TTL <= 0:
            raise NotFoundError(f"lease {lease} does not exist or has expired")

    def lease_renewer(self, lease: int) -> _Renewer:
        """A blocking renewer on a synchronous channel of its own (``grpc.aio`` stays on
        this loop: its channels belong to one event loop)."""
        if self._tls is None:
            channel = grpc.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        else:
            options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self._tls_name)]
            channel = grpc.secure_channel(self._target, self._tls.credentials(), options=options)
        return _Renewer(channel, lease, functools.partial(self._error, write=False))

    async def revoke(self, lease: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease)
        with contextlib.suppress(NotFoundError):  # already gone: revoking is idempotent
            await self._read(
                "a lease revocation",
                lambda timeout: self._leases.LeaseRevoke(
                    request, timeout=timeout, wait_for_ready=True
                ),
            )

    # -- health and lifecycle --------------------------------------------------

    async def health(self) -> list[EndpointHealth]:
        """Each member asked on its own: reachable, which member leads, revision."""
        return list(await asyncio.gather(*(self._member_health(e) for e in self.endpoints)))

    async def _member_health(self, endpoint: str) -> EndpointHealth:
        channel = self._open_channel(endpoint)
        try:
            status = await rpc.MaintenanceStub(channel).Status(
                rpc.StatusRequest(), timeout=min(self.timeout, 2.0)
            )
        except grpc.aio.AioRpcError as exc:
            return EndpointHealth(endpoint, False, f"unreachable: {exc.details() or exc.code()}")
        finally:
            await channel.close()
        if not status.leader:
            return EndpointHealth(endpoint, False, "member up, but it has no leader (no quorum)")
        role = "leader" if status.leader == status.header.member_id else "follower"
        return EndpointHealth(
            endpoint,
            True,
            f"{role}, etcd {status.version}, raft term {status.raftTerm}",
            leader=role == "leader",
            revision=int(status.header.revision),
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            stream.cancel()
        with contextlib.suppress(Exception):
            await self._channel.close()


class _Renewer:
    """One lease's keep-alives, blocking, from any thread (``EtcdStore.lease_renewer``)."""

    def __init__(self, channel: grpc.Channel, lease: int, error: Callable[..., ShoalError]) -> None:
        self._channel = channel
        self._leases = rpc.LeaseStub(channel)
        self._lease = lease
        self._error = error  # EtcdStore._error: the same messages as the store's own calls

    def renew(self, timeout: float) -> None:
        request = rpc.LeaseKeepAliveRequest(ID=self._lease)
        replies = self._leases.LeaseKeepAlive(iter([request]), timeout=timeout, wait_for_ready=True)
        try:
            reply = next(replies, None)
        except grpc.RpcError as exc:
            raise self._error(exc, what="a lease keep-alive") from exc
        finally:
            replies.cancel()
        if reply is None:
            raise StoreUnavailableError("etcd closed a lease keep-alive")
        if reply.TTL <= 0:
            raise NotFoundError(f"lease {self._lease} does not exist or has expired")

    def close(self) -> None:
        self._channel.close()
