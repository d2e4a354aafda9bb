"""Backups (``shoal.store.backup``) on every backend: a snapshot at one revision, restored.

Runs against memory, sqlite and etcd like the rest of the conformance suite
(``conftest.py``): a backup of one backend restores into a fresh store of the
same kind, every key and value back, leases left out, a wrong data key or a
damaged file refused with nothing written.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable

import pytest

from shoal.errors import DataKeyError
from shoal.security.datakey import CHECK_KEY, DataKey, verify_against_store
from shoal.store import Put, Store
from shoal.store.backup import BackupError, lines, read, restore, snapshot

StoreFactory = Callable[..., Awaitable[Store]]


def _file(backup_lines: list[str]) -> io.StringIO:
    return io.StringIO("".join(backup_lines))


async def _filled(store: Store, key: DataKey) -> None:
    await verify_against_store(key, store)  # writes the key check value
    sealed = key.seal(b"hunter2", b"secret/db-pass")
    await store.txn([], [Put("/secrets/db-pass", sealed), Put("/services/web", b'{"a": 1}')])
    # More keys than one etcd transaction takes (128): the restore must chunk.
    for start in range(0, 300, 100):
        await store.txn([], [Put(f"/tasks/{n:04d}", b"t" * 50) for n in range(start, start + 100)])
    lease = await store.grant_lease(30)
    await store.put("/election/leader", b"m1", lease=lease)


async def test_a_backup_restores_every_key_but_leased_ones(make_store: StoreFactory) -> None:
    key = DataKey.generate()
    source = await make_store()
    await _filled(source, key)
    backup = read(_file(list(lines(await snapshot(source)))), "test.backup")
    assert backup.header["keys"] == 303  # 300 tasks, a service, a secret, the check value
    assert backup.header["dataKey"]["keyId"] == key.key_id
    text = "".join(lines(backup))
    assert "hunter2" not in text  # sealed as stored
    assert "/election/leader" not in text

    target = await make_store()
    assert await restore(target, backup, key) == 303
    want, _ = await source.range("/")
    got, _ = await target.range("/")
    assert [(kv.key, kv.value) for kv in got] == [
        (kv.key, kv.value) for kv in want if kv.key != "/election/leader"
    ]
    secret = await target.get("/secrets/db-pass")
    assert secret is not None
    assert key.open(secret.value, b"secret/db-pass") == b"hunter2"
    await verify_against_store(key, target)  # a manager with the key starts on it


async def test_a_snapshot_is_one_revision_while_writes_go_on(make_store: StoreFactory) -> None:
    store = await make_store()
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            value = str(n).encode()
            await store.txn([], [Put("/pair/a", value), Put("/pair/b", value)])
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        for _ in range(20):
            items = dict((await snapshot(store)).items)
            assert items.get("/pair/a") == items.get("/pair/b")
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await task


async def test_a_restore_refuses_a_wrong_key_or_a_store_in_use(make_store: StoreFactory) -> None:
    key = DataKey.generate()
    source = await make_store()
    await _filled(source, key)
    backup = await snapshot(source)
    target = await make_store()
    with pytest.raises(DataKeyError, match="not the key the backup's secrets are encrypted with"):
        await restore(target, backup, DataKey.generate())
    assert (await target.range("/"))[0] == []
    await target.put("/services/other", b"{}")
    with pytest.raises(BackupError, match="is not empty"):
        await restore(target, backup, key)
    assert [kv.key for kv in (await target.range("/"))[0]] == ["/services/other"]
    assert (await source.get(CHECK_KEY)) is not None


async def test_a_damaged_or_truncated_file_is_refused(store: Store) -> None:
    await store.put("/services/web", b'{"replicas": 3}')
    good = list(lines(await snapshot(store)))
    damaged = [*good]
    damaged[1] = damaged[1].replace('"key": "/services/web"', '"key": "/services/weB"')
    with pytest.raises(BackupError, match="damaged"):
        read(_file(damaged), "x.backup")
    with pytest.raises(BackupError, match="truncated"):
        read(_file(good[:-1]), "x.backup")
    with pytest.raises(BackupError, match="not a shoal backup"):
        read(_file(['{"format": "other"}\n']), "x.backup")
    with pytest.raises(BackupError, match=r"x.backup:2: not a shoal backup line"):
        read(_file([good[0], "garbage\n"]), "x.backup")
