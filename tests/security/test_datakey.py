"""The data key's store check value and key-file hygiene (sealing itself: test_ca.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.errors import DataKeyError
from shoal.security.datakey import CHECK_KEY, DataKey, verify_against_store
from shoal.store import MemoryStore, SqliteStore


def test_sealed_value_opens_only_with_its_key_and_context() -> None:
    key, other = DataKey.generate(), DataKey.generate()
    sealed = key.seal(b"hunter2", b"/secrets/db-pass")
    assert b"hunter2" not in sealed
    assert key.open(sealed, b"/secrets/db-pass") == b"hunter2"
    with pytest.raises(DataKeyError):
        other.open(sealed, b"/secrets/db-pass")
    with pytest.raises(DataKeyError):
        key.open(sealed, b"/secrets/other")  # copied to another key: refused


def test_key_file_is_private_complete_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "datakey"
    key = DataKey.load_or_create(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert DataKey.load_or_create(path).key_id == key.key_id
    assert [p.name for p in path.parent.iterdir()] == ["datakey"]  # no temporary left


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "datakey"
    DataKey.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(DataKeyError, match="chmod 600"):
        DataKey.load(path)


async def test_store_remembers_the_first_key_and_refuses_another(tmp_path: Path) -> None:
    store = MemoryStore()
    key = DataKey.load_or_create(tmp_path / "first")
    await verify_against_store(key, store)
    stored = await store.get(CHECK_KEY)
    assert stored is not None
    assert key.key_id.encode() in stored.value
    await verify_against_store(DataKey.load(tmp_path / "first"), store)  # same key: fine
    other = DataKey.load_or_create(tmp_path / "wrong")
    with pytest.raises(DataKeyError) as refused:
        await verify_against_store(other, store)
    message = str(refused.value)
    assert str(tmp_path / "wrong") in message
    assert other.key_id in message
    assert key.key_id in message
    assert "--data-key-file" in message
    after = await store.get(CHECK_KEY)
    assert after is not None and after.mod_revision == stored.mod_revision  # nothing written
    await store.aclose()


async def test_check_value_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    key = DataKey.generate()
    store = await SqliteStore.open(path)
    await verify_against_store(key, store)
    await store.aclose()
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(DataKeyError, match="not the key"):
            await verify_against_store(DataKey.generate(), store)
        await verify_against_store(key, store)
    finally:
        await store.aclose()
