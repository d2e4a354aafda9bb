"""A manager refuses to start with a data key that does not match its store, saying why.

Real ``shoal manager`` processes on SQLite and on a real etcd: the first start
records the key's check value, a later start (or a second manager) with
another key exits with code 1 and a sentence naming both keys, before it
listens on its port.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shoal.security.datakey import DataKey
from tests.e2e.cluster import Daemon, free_port, shoal_cmd, wait_for
from tests.etcdcluster import etcd_cluster

pytestmark = pytest.mark.slow


def _manager(store: str, root: Path, port: int, *extra: str) -> list[str]:
    return shoal_cmd(
        "manager", "--store", store, "--state-dir", str(root), "--listen", f"127.0.0.1:{port}"
    ) + list(extra)


def _answers(port: int, state: Path) -> bool:
    """The manager answers, asked with the admin bundle a manager wrote into ``state``."""
    result = subprocess.run(
        shoal_cmd("version", "--server", f"127.0.0.1:{port}"),
        capture_output=True,
        timeout=30,
        env={**os.environ, "SHOAL_STATE_DIR": str(state)},
    )
    return result.returncode == 0


def _refused(args: list[str]) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_sqlite_manager_refuses_another_data_key(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'm' / 'state.db'}"
    port = free_port()
    first = Daemon("m", _manager(store, tmp_path / "m", port), tmp_path / "m.log")
    first.start()
    try:
        wait_for(lambda: _answers(port, tmp_path / "m"), 30, "manager to answer")
    finally:
        first.stop()
    own_key = tmp_path / "m" / "datakey"
    assert own_key.stat().st_mode & 0o777 == 0o600
    other = DataKey.load_or_create(tmp_path / "other-key")

    stderr = _refused(_manager(store, tmp_path / "m", port, "--data-key-file", other.source))
    assert f"the data key from {other.source} (id {other.key_id})" in stderr
    assert "is not the key this store's secrets are encrypted with" in stderr
    assert not _answers(port, tmp_path / "m")

    # Its own key (the default file in the state dir) still opens the store.
    again = Daemon("m", _manager(store, tmp_path / "m", port), tmp_path / "m.log")
    again.start()
    try:
        wait_for(lambda: _answers(port, tmp_path / "m"), 30, "manager to answer with its own key")
    finally:
        again.stop()


def test_etcd_managers_need_one_shared_data_key(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd", size=1) as etcd:
        store = etcd.url("shoal")
        shared = tmp_path / "datakey"  # created by the first manager
        port = free_port()
        first = Daemon(
            "m1",
            _manager(store, tmp_path / "m1", port, "--data-key-file", str(shared)),
            tmp_path / "m1.log",
        )
        first.start()
        try:
            wait_for(lambda: _answers(port, tmp_path / "m1"), 30, "first manager to answer")
            assert shared.stat().st_mode & 0o777 == 0o600

            stderr = _refused(_manager(store, tmp_path / "m2", free_port()))
            assert "--data-key-file" in stderr and "every manager" in stderr

            other = DataKey.load_or_create(tmp_path / "m2-key")
            stderr = _refused(
                _manager(store, tmp_path / "m2", free_port(), "--data-key-file", other.source)
            )
            assert f"(id {other.key_id})" in stderr
            assert "copy the one the first manager used" in stderr

            port2 = free_port()
            second = Daemon(
                "m2",
                _manager(store, tmp_path / "m2", port2, "--data-key-file", str(shared)),
                tmp_path / "m2.log",
            )
            second.start()
            try:
                wait_for(
                    lambda: _answers(port2, tmp_path / "m1"),
                    30,
                    "second manager with the shared key",
                )
            finally:
                second.stop()
        finally:
            first.stop()
