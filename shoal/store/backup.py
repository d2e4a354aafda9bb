"""Backups of a store: a consistent snapshot taken online, restored into an empty store.

Taking one
    ``snapshot(store)`` is one ``range("/")``: every key at one revision (on
    etcd every page is read at the first page's revision; sqlite and memory
    answer it in one step), so a backup taken while the cluster runs is a state
    the cluster really was in. Keys held by a lease (the election's leader and
    manager records) are left out: they belong to processes, not to the
    cluster, and a restored cluster elects afresh.

The file (``shoal-backup/1``): JSON lines, UTF-8.

    {"format": "shoal-backup/1", "createdAt": ISO-8601, "revision": N,
     "source": STORE-URL, "keys": COUNT, "dataKey": {"keyId": ..., "check": ...}}
    {"key": "/services/web", "value": BASE64}          one line per key, sorted by key
    ...
    {"end": true, "keys": COUNT, "sha256": HEX}        over every key line, newline included

``dataKey`` is the store's key check value (``/cluster/datakey``): the record
that proves which data key the secrets and the CA key are sealed with. The
values are copied as they are stored, so secrets stay sealed: a backup holds no
secret in the clear, and is useless without the data key, which is not in it
(keep the key file apart from the backups).

Restoring one
    ``restore(store, backup, key)`` checks that ``key`` opens the backup's check
    value (a wrong key refuses before anything is written), that the store is
    empty, then writes every key in transactions within the store's limits.
    Store revisions start afresh; nothing in shoal keeps a store revision inside
    a value, so nothing depends on them. Restore offline, into a store no
    manager runs on: a running leader would act on a half-written state.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from shoal.errors import ShoalError
from shoal.security.datakey import CHECK_KEY, DataKey, check_value
from shoal.store.base import Put, Store

FORMAT = "shoal-backup/1"


class BackupError(ShoalError):
    """A backup file that cannot be read, or a restore that must not go ahead."""


@dataclass(frozen=True, slots=True)
class Backup:
    """A snapshot: its header and every key's value, sorted by key."""

    header: dict[str, Any]
    items: list[tuple[str, bytes]]

    @property
    def check_value(self) -> bytes | None:
        return next((value for key, value in self.items if key == CHECK_KEY), None)


async def snapshot(store: Store) -> Backup:
    """Every key of ``store`` at one revision, lease-held keys left out."""
    kvs, revision = await store.range("/")
    items = [(kv.key, kv.value) for kv in kvs if kv.lease == 0]
    header: dict[str, Any] = {
        "format": FORMAT,
        "createdAt": datetime.now(UTC).isoformat(),
        "revision": revision,
        "source": store.url,
        "keys": len(items),
    }
    check = next((value for key, value in items if key == CHECK_KEY), None)
    if check is not None:
        header["dataKey"] = json.loads(check)
    return Backup(header, items)


def key_line(key: str, value: bytes) -> str:
    return json.dumps({"key": key, "value": base64.b64encode(value).decode()}) + "\n"


def lines(backup: Backup) -> Iterator[str]:
    """The file, line by line (see the module docstring)."""
    digest = hashlib.sha256()
    yield json.dumps(backup.header) + "\n"
    for key, value in backup.items:
        line = key_line(key, value)
        digest.update(line.encode())
        yield line
    yield json.dumps({"end": True, "keys": len(backup.items), "sha256": digest.hexdigest()}) + "\n"


def read(stream: IO[str], name: str) -> Backup:
    """Parse a backup file; ``BackupError`` names what is wrong (``name``: for the message)."""
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    items: list[tuple[str, bytes]] = []
    trailer: dict[str, Any] | None = None
    for number, line in enumerate(stream, 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise BackupError(f"{name}:{number}: not a shoal backup line: {exc}") from exc
        if not isinstance(record, dict):
            raise BackupError(f"{name}:{number}: not a shoal backup line")
        if header is None:
            if record.get("format") != FORMAT:
                raise BackupError(
                    f"{name}: not a shoal backup (format {record.get('format')!r}, "
                    f"expected {FORMAT!r})"
                )
            header = record
            continue
        if trailer is not None:
            raise BackupError(f"{name}:{number}: lines after the end record")
        if record.get("end") is True:
            trailer = record
            continue
        try:
            key = str(record["key"])
            value = base64.b64decode(str(record["value"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise BackupError(f"{name}:{number}: a key line needs key and value") from exc
        digest.update(line.encode() if line.endswith("\n") else (line + "\n").encode())
        items.append((key, value))
    if header is None:
        raise BackupError(f"{name}: empty file, not a shoal backup")
    if trailer is None:
        raise BackupError(
            f"{name}: the backup is truncated (no end record after {len(items)} keys)"
        )
    if trailer.get("keys") != len(items) or trailer.get("sha256") != digest.hexdigest():
        raise BackupError(f"{name}: the backup is damaged (its checksum does not match)")
    return Backup(header, items)


def check_key(backup: Backup, key: DataKey) -> None:
    """Refuse (``DataKeyError``) unless ``key`` is the one the backup's secrets are sealed with."""
    check = backup.check_value
    if check is None:
        if any(k.startswith(("/secrets/", "/configs/", "/security/")) for k, _ in backup.items):
            raise BackupError("the backup has sealed values but no data key check value")
        return
    check_value(key, check, "the backup's")


async def restore(store: Store, backup: Backup, key: DataKey) -> int:
    """Write ``backup`` into the empty ``store``; return how many keys were written."""
    check_key(backup, key)
    existing, _ = await store.range("/")
    if existing:
        raise BackupError(
            f"{store.url} is not empty ({len(existing)} keys, e.g. {existing[0].key}): restore "
            "into an empty store (stop the managers, wipe the state or etcd prefix first)"
        )
    most = store.max_txn_ops or 128
    budget = store.max_txn_bytes or 4 << 20
    chunk: list[Put] = []
    size = 0
    for item_key, value in backup.items:
        if chunk and (len(chunk) >= most or size + len(item_key) + len(value) > budget // 2):
            await store.txn([], chunk)
            chunk, size = [], 0
        chunk.append(Put(item_key, value))
        size += len(item_key) + len(value)
    if chunk:
        await store.txn([], chunk)
    return len(backup.items)
