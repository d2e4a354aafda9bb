"""The etcd store over TLS, against real members that require client certificates.

The conformance suite runs on such a cluster too (``etcd-tls`` in conftest);
these tests pin what is special about it: without a client certificate, or
without TLS at all, the members refuse; a manager given the URL's TLS options
runs on it like on any etcd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoal.errors import StoreUnavailableError
from shoal.store.etcd import EtcdStore, parse_etcd_tls
from tests.etcdcluster import EtcdCluster


async def test_store_works_with_client_certificates(etcd_tls: EtcdCluster) -> None:
    store = await EtcdStore.open(etcd_tls.url("tls/works"))
    try:
        revision = await store.put("/k", b"v")
        kv = await store.get("/k")
        assert kv is not None and kv.value == b"v" and kv.mod_revision == revision
        health = await store.health()
        assert [h.healthy for h in health] == [True, True, True]
    finally:
        await store.aclose()
    # What shoal wrote is in etcd, as etcdctl (with its own client certificate) sees it.
    assert "v" in etcd_tls.etcdctl("get", "/tls/works/k", "--print-value-only")


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="plaintext"),
        pytest.param("?ca={pki}/ca.pem", id="tls-without-client-cert"),
    ],
)
async def test_members_refuse_clients_without_certificates(
    etcd_tls: EtcdCluster, query: str
) -> None:
    pki = etcd_tls.root / "pki"
    url = f"etcd://{','.join(etcd_tls.endpoints)}/tls/refused{query.format(pki=pki)}"
    with pytest.raises(StoreUnavailableError):
        await EtcdStore.open(url, timeout=3.0)


def test_tls_options_are_checked_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown etcd URL option"):
        parse_etcd_tls("etcd://127.0.0.1:2379/p?cafile=x")
    with pytest.raises(ValueError, match="both cert= and key="):
        parse_etcd_tls(f"etcd://127.0.0.1:2379/p?ca={tmp_path}/x&cert=y")
    with pytest.raises(StoreUnavailableError, match="cannot read the etcd CA"):
        parse_etcd_tls(f"etcd://127.0.0.1:2379/p?ca={tmp_path}/missing.pem")


def test_manager_runs_on_tls_etcd(etcd_tls: EtcdCluster, tmp_path: Path) -> None:
    from tests.e2e.cluster import free_port, wait_for

    port = free_port()
    log = (tmp_path / "manager.log").open("wb")
    manager = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal",
            "manager",
            "--store",
            etcd_tls.url("tls/manager"),
            "--state-dir",
            str(tmp_path / "m"),
            "--data-key-file",
            str(tmp_path / "datakey"),
            "--listen",
            f"127.0.0.1:{port}",
            "--join-listen",
            "127.0.0.1:0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        env_dir = tmp_path / "m"

        def status() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "shoal", "cluster", "status", "-o", "json"],
                capture_output=True,
                text=True,
                timeout=30,
                env={"PATH": "/usr/bin:/bin", "SHOAL_STATE_DIR": str(env_dir)},
            )

        wait_for(lambda: status().returncode == 0, 30, "the manager to lead on TLS etcd")
        # The CA it created sits in etcd sealed: its private key never in the clear.
        keys = etcd_tls.etcdctl("get", "--prefix", "/tls/manager/security/ca")
        assert "PRIVATE KEY" not in keys and "BEGIN CERTIFICATE" in keys
    finally:
        manager.terminate()
        manager.wait(15)
        log.close()
