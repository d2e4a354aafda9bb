"""A large ``sim`` service on three managers over a 3-member etcd with its default limits.

``tests/store`` checks on their own that transactions are chunked below etcd's
``--max-txn-ops`` (128); here the whole control plane runs at a size where
every pass of the orchestrator, the scheduler and the status writer is many
transactions: 4,000 replicas on 20 simulated nodes, the HA tests' timing
(heartbeat 0.5 s, lease 2 s). What is checked is read from etcd itself: one
running task per slot, spread evenly, no node declared down and no task
orphaned, and every task key gone after the delete. (20,000 replicas on 200
nodes is ``bench/etcd_scale.py``: too long for the suite.)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from shoal.models import DesiredState, Task, TaskState
from shoal.store.etcd import EtcdStore
from shoal.store.typed import TASKS, decode
from tests.e2e.cluster import wait_for
from tests.e2e.hacluster import HACluster, ha_cluster

REPLICAS = 4_000
NODES = 20


def stored_tasks(ha: HACluster) -> list[Task]:
    async def read() -> list[Task]:
        store = await EtcdStore.open(ha.etcd.url("shoal"))
        try:
            kvs, _ = await store.range(TASKS)
        finally:
            await store.aclose()
        return [t for t in (decode(kv) for kv in kvs) if isinstance(t, Task)]

    return asyncio.run(read())


def running_slots(ha: HACluster) -> int:
    return sum(
        1
        for t in stored_tasks(ha)
        if t.desired_state == DesiredState.RUNNING and t.status.state == TaskState.RUNNING
    )


def test_a_large_service_converges_on_etcd_and_goes_when_deleted(tmp_path: Path) -> None:
    with ha_cluster(tmp_path, agents=0) as ha:
        ha.start_agent("fleet", "m1", "--sim-nodes", str(NODES))
        wait_for(
            lambda: (
                sum(
                    n["status"]["state"] == "ready"
                    for n in ha.call("m1", "Get", {"kind": "nodes"})["items"]
                )
                == NODES
            ),
            60,
            f"{NODES} simulated nodes ready",
        )
        spec = {
            "apiVersion": "shoal/v1",
            "kind": "Service",
            "metadata": {"name": "big"},
            "spec": {"replicas": REPLICAS, "template": {"runtime": "sim", "command": ["sim"]}},
        }
        path = tmp_path / "big.json"
        path.write_text(json.dumps(spec))
        applied = ha.cli("m1", "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr

        wait_for(lambda: running_slots(ha) == REPLICAS, 90, f"{REPLICAS} replicas running")

        tasks = stored_tasks(ha)
        live = [t for t in tasks if t.desired_state == DesiredState.RUNNING]
        assert sorted(t.slot for t in live) == list(range(1, REPLICAS + 1))
        assert {t.status.state for t in live} == {TaskState.RUNNING}
        per_node = Counter(t.node_id for t in live)
        assert len(per_node) == NODES
        assert max(per_node.values()) - min(per_node.values()) <= 1, per_node
        assert not [t for t in tasks if t.status.state == TaskState.ORPHANED]
        nodes = ha.call("m1", "Get", {"kind": "nodes"})["items"]
        assert {n["status"]["state"] for n in nodes} == {"ready"}
        events = ha.call("m1", "Events", {})["events"]
        assert not [e for e in events if e["reason"] == "NodeDown"]

        deleted = ha.cli("m1", "delete", "service", "big", "--no-wait")
        assert deleted.returncode == 0, deleted.stderr
        wait_for(lambda: not stored_tasks(ha), 90, "every task key gone from etcd")
