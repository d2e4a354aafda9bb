"""The cluster's security state in the store, and every manager's live copy of it.

Key layout (beside ``shoal.store.typed``'s):

    /security/ca                 {"cert": PEM, "key": sealed PEM (base64), "dataKeyId"}
    /security/tokens             {"worker": token, "manager": token}
    /security/nodes/<id>         {"role", "issuedAt"}: a node identity was issued
    /security/users/<name>       {"role", "createdAt"}
    /security/revoked/<kind>/<name>  {"before": time}: certificates of that node or
                                 user issued before this time are refused

The CA key is sealed with the data key (context ``ca-key``), never stored in the
clear. Every write is a compare-and-set on the key's revision, so two managers
racing (two first managers creating a CA, two joins claiming one name) end with
one winner and the loser reading the winner's value.

Revocation is by name and time rather than by serial: removing a node refuses
every certificate it ever had (renewed ones too), and a machine that joins again
later under the same name gets a new certificate issued after the revocation.
Each manager follows ``/security/`` with a watch, so a revocation made through
any manager is enforced by all of them within the watch's delay; listeners
(``on_revoked``) let the leader end the removed node's session at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from shoal.errors import (
    AuthError,
    CompactedError,
    ConflictError,
    DataKeyError,
    NotFoundError,
    StoreError,
)
from shoal.security.ca import NODE_ROLES, ROLE_MANAGER, ROLE_WORKER, CertificateAuthority, load_key
from shoal.security.datakey import DataKey
from shoal.security.tokens import new_token
from shoal.store.base import Compare, Delete, EventType, KeyValue, Put, Store

log = structlog.get_logger(__name__)

PREFIX = "/security/"
CA_KEY = PREFIX + "ca"
TOKENS_KEY = PREFIX + "tokens"
NODES = PREFIX + "nodes/"
USERS = PREFIX + "users/"
REVOKED = PREFIX + "revoked/"
CA_CONTEXT = b"ca-key"

RevokedListener = Callable[[str, str], None]


def _json(kv: KeyValue) -> dict[str, Any]:
    value = json.loads(kv.value)
    return value if isinstance(value, dict) else {}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _next_second() -> datetime:
    """Certificates carry whole seconds: a revocation covers the current second entirely."""
    now = datetime.now(UTC)
    return now.replace(microsecond=0) + timedelta(seconds=1)


class SecurityState:
    """The ``/security/`` keys of one store, kept current by a watch."""

    def __init__(self, store: Store, data_key: DataKey) -> None:
        self.store = store
        self.data_key = data_key
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.revoked: dict[str, datetime] = {}  # "node/n1" -> refuse certificates before
        self._revisions: dict[str, int] = {}
        self._listeners: list[RevokedListener] = []
        self._watch: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- lifecycle

    async def bootstrap(self, cluster_id: str) -> CertificateAuthority:
        """The cluster's CA (created by the first manager) and its tokens."""
        kv = await self.store.get(CA_KEY)
        if kv is None:
            ca = CertificateAuthority.create(cluster_id)
            record = {
                "cert": ca.cert_pem.decode(),
                "key": base64.b64encode(self.data_key.seal(ca.key_pem, CA_CONTEXT)).decode(),
                "dataKeyId": self.data_key.key_id,
            }
            created = await self._create(CA_KEY, record)
            if created:
                log.info("security.ca_created", digest=ca.digest, cluster=cluster_id)
            kv = await self.store.get(CA_KEY)
            assert kv is not None
        ca = self._open_ca(_json(kv))
        if await self.store.get(TOKENS_KEY) is None:
            await self._create(
                TOKENS_KEY,
                {role: str(new_token(ca.digest)) for role in (ROLE_WORKER, ROLE_MANAGER)},
            )
        return ca

    def _open_ca(self, record: dict[str, Any]) -> CertificateAuthority:
        stored_id = str(record.get("dataKeyId", ""))
        if stored_id and stored_id != self.data_key.key_id:
            where = f" ({self.data_key.path})" if self.data_key.path else ""
            raise DataKeyError(
                f"this manager's data key{where} is key {self.data_key.key_id}, but the "
                f"cluster's data is sealed with key {stored_id}: give this manager the same "
                "key file as the other managers (--data-key-file)"
            )
        key_pem = self.data_key.open(base64.b64decode(record["key"]), CA_CONTEXT)
        return CertificateAuthority(str(record["cert"]).encode(), load_key(key_pem))

    async def start(self) -> None:
        revision = await self._relist()
        self._watch = asyncio.create_task(self._follow(revision + 1), name="security-watch")

    async def aclose(self) -> None:
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def on_revoked(self, listener: RevokedListener) -> None:
        self._listeners.append(listener)

    # ----------------------------------------------------------------- reads

    def is_revoked(self, kind: str, name: str, issued_at: datetime) -> bool:
        before = self.revoked.get(f"{kind}/{name}")
        return before is not None and issued_at < before

    async def wait_past_revocation(self, kind: str, name: str) -> None:
        """Before issuing to a name revoked this very second: let that second pass."""
        before = self.revoked.get(f"{kind}/{name}")
        if before is not None:
            delay = (before - datetime.now(UTC)).total_seconds()
            if 0 < delay <= 2:
                await asyncio.sleep(delay + 0.01)

    # ---------------------------------------------------------------- writes

    async def rotate_token(self, role: str, ca_digest: str) -> str:
        if role not in NODE_ROLES:
            raise ValueError(f"role: unknown token role {role!r} (worker or manager)")
        for _ in range(5):
            kv = await self.store.get(TOKENS_KEY)
            tokens = _json(kv) if kv else {}
            tokens[role] = str(new_token(ca_digest))
            if await self._put(TOKENS_KEY, tokens, kv.mod_revision if kv else 0):
                self.tokens = {str(k): str(v) for k, v in tokens.items()}
                return self.tokens[role]
        raise ConflictError("the tokens kept changing; try again")

    async def claim_node(self, node_id: str, role: str) -> None:
        """Record that ``node_id`` has an identity; refuse a name somebody holds."""
        if not await self._create(NODES + node_id, {"role": role, "issuedAt": _now()}):
            raise AuthError(
                f"nodeId: a node named {node_id!r} has already joined this cluster; an agent "
                "cannot take another node's name (if that machine lost its state directory, "
                f"run `shoal node rm {node_id}` first, or join under another --name)"
            )

    async def add_user(self, name: str, role: str) -> None:
        kv = await self.store.get(USERS + name)
        await self._put(
            USERS + name, {"role": role, "createdAt": _now()}, kv.mod_revision if kv else 0
        )

    async def remove(self, kind: str, name: str) -> None:
        """Forget a node or user and refuse every certificate issued to it until now."""
        key = (NODES if kind == "node" else USERS) + name
        if kind == "user" and await self.store.get(key) is None:
            raise NotFoundError(f"user {name!r} not found")
        result = await self.store.txn(
            [],
            [
                Delete(key),
                Put(
                    f"{REVOKED}{kind}/{name}",
                    json.dumps({"before": _next_second().isoformat()}).encode(),
                ),
            ],
        )
        if not result.succeeded:  # pragma: no cover - no compares, cannot fail
            raise ConflictError(f"could not revoke {kind} {name}")
        await self._relist()

    async def _create(self, key: str, value: dict[str, Any]) -> bool:
        return await self._put(key, value, 0)

    async def _put(self, key: str, value: dict[str, Any], expect: int) -> bool:
        result = await self.store.txn(
            [Compare(key, "mod_revision", "==", expect)],
            [Put(key, json.dumps(value).encode())],
        )
        if result.succeeded:
            self._apply(key, value)
        return result.succeeded

    # ------------------------------------------------------------- following

    async def _relist(self) -> int:
        kvs, revision = await self.store.range(PREFIX)
        self.users.clear()
        self.nodes.clear()
        for kv in kvs:
            self._apply(kv.key, _json(kv))
        return revision

    async def _follow(self, start: int) -> None:
        while True:
            try:
                async for batch in self.store.watch(PREFIX, start):
                    for event in batch:
                        start = event.kv.mod_revision + 1
                        if event.type == EventType.DELETE:
                            self._apply(event.kv.key, None)
                        else:
                            self._apply(event.kv.key, _json(event.kv))
                return
            except CompactedError:
                start = await self._relist() + 1
            except StoreError as exc:
                log.warning("security.watch_failed", error=str(exc))
                await asyncio.sleep(1.0)

    def _apply(self, key: str, value: dict[str, Any] | None) -> None:
        if key == TOKENS_KEY and value is not None:
            self.tokens = {str(k): str(v) for k, v in value.items()}
        elif key.startswith(USERS):
            name = key[len(USERS) :]
            if value is None:
                self.users.pop(name, None)
            else:
                self.users[name] = value
        elif key.startswith(NODES):
            name = key[len(NODES) :]
            if value is None:
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = value
        elif key.startswith(REVOKED) and value is not None:
            target = key[len(REVOKED) :]
            before = datetime.fromisoformat(str(value["before"]))
            if self.revoked.get(target) != before:
                self.revoked[target] = before
                kind, _, name = target.partition("/")
                for listener in self._listeners:
                    listener(kind, name)
