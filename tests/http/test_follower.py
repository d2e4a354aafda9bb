"""The HTTP API on a follower (two managers on a real etcd): reads from its own
informer, actions forwarded to the leader with the user's name, as the CLI's are."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.manager.server import Manager, ManagerSettings, open_manager
from shoal.security.contexts import load_bundle
from tests.etcdcluster import etcd_cluster, require_etcd
from tests.http.conftest import Web

pytestmark = pytest.mark.slow


def settings(root: Path, url: str, name: str, http: bool) -> ManagerSettings:
    return ManagerSettings(
        store_url=url,
        state_dir=root / name,
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
        data_key_file=root / "datakey",
        lease_ttl=2.0,
        http_listen="127.0.0.1:0" if http else None,
    )


@contextlib.asynccontextmanager
async def two_managers(root: Path) -> AsyncIterator[tuple[Manager, Manager]]:
    require_etcd()
    with etcd_cluster(root / "etcd", size=1) as etcd:
        url = etcd.url("ui")
        async with open_manager(settings(root, url, "leader", http=False)) as leader:
            for _ in range(200):
                if leader.election.is_leader:
                    break
                await asyncio.sleep(0.05)
            assert leader.election.is_leader
            async with open_manager(settings(root, url, "follower", http=True)) as follower:
                for _ in range(200):
                    if follower.election.leader is not None:
                        break
                    await asyncio.sleep(0.05)
                assert not follower.election.is_leader
                yield leader, follower


def audit(manager: Manager) -> list[dict[str, Any]]:
    path = manager.settings.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_follower_reads_itself_and_forwards_actions_to_the_leader(tmp_path: Path) -> None:
    async with two_managers(tmp_path) as (leader, follower):
        at_leader = Web(leader, load_bundle(leader.admin_bundle), tmp_path)
        at_follower = Web(follower, load_bundle(follower.admin_bundle), tmp_path)
        doc = {
            "apiVersion": "shoal/v1",
            "kind": "Service",
            "metadata": {"name": "api"},
            "spec": {"replicas": 1, "template": {"runtime": "sim", "command": ["work"]}},
        }
        await at_leader.control("Apply", {"documents": [doc]})
        admin = await at_follower.browser()
        try:
            for _ in range(100):  # the follower's informer follows the store
                status, listed = await admin.get("/api/v1/services")
                if listed.get("items"):
                    break
                await asyncio.sleep(0.05)
            assert [s["metadata"]["name"] for s in listed["items"]] == ["api"]
            status, reply = await admin.post("/api/v1/services/api/scale", {"replicas": 3})
            assert (status, reply) == (200, {"scaled": {"api": 3}})
            stored = await at_leader.control("Get", {"kind": "services", "name": "api"})
            assert stored["items"][0]["spec"]["replicas"] == 3
            status, reply = await admin.get("/api/v1/services/api")  # Describe: the leader's
            assert status == 200 and reply["service"]["spec"]["replicas"] == 3
        finally:
            await admin.close()
        forwarded = [r for r in audit(leader) if r["method"] == "Scale"]
        assert [(r["user"], r["outcome"]) for r in forwarded] == [("admin", "OK")]
        assert forwarded[0]["via"] == follower.security.name
        assert [r["via"] for r in audit(follower) if r["method"] == "Scale"] == [None]
