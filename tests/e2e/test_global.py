"""Global and replicated services applied together on three agents, on a loaded machine.

A global task knows its node from birth but is the agent's only once the
scheduler has assigned it; an agent that took a still-pending task for one it
had lost failed every global task within milliseconds. Here the machine is
kept busy (two CPU burners, as many as it has cores) while six services go in
with one apply; no task may ever end, and ``/proc`` must show exactly the
processes the services ask for.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, cluster_at, task_processes

pytestmark = pytest.mark.slow

NODES = ("n1", "n2", "n3")
GLOBAL = ("gl-a", "gl-b", "gl-c")
REPLICATED = ("rp-a", "rp-b", "rp-c")


@contextlib.contextmanager
def busy_machine(burners: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        for name in NODES:
            running.start_agent(name)
        yield running


def test_global_and_replicated_services_together_under_load_lose_no_task(
    cluster: Cluster,
) -> None:
    # condition none: a task that fails is not replaced, so a loss stays visible.
    never = {"condition": "none"}
    docs = [
        cluster.service(name, ["sleep", "300"], replicas=None, mode="global", restartPolicy=never)
        for name in GLOBAL
    ] + [
        cluster.service(name, ["sleep", "300"], replicas=2, restartPolicy=never)
        for name in REPLICATED
    ]
    with busy_machine(os.cpu_count() or 2):
        cluster.apply("\n---\n".join(docs), "services.yaml")
        for name in GLOBAL:
            cluster.wait_running(name, len(NODES), timeout=60)
        for name in REPLICATED:
            cluster.wait_running(name, 2, timeout=60)

    every = cluster.tasks(all=True)
    ended = [(t["id"], t["status"]) for t in every if t["status"]["state"] != "running"]
    assert ended == []
    assert len(every) == len(GLOBAL) * len(NODES) + len(REPLICATED) * 2

    for name in GLOBAL:
        # One task per node in the process table, none started twice.
        assert Counter(node for _, node in running_tasks(name)) == Counter(NODES)
    for name in REPLICATED:
        assert len(running_tasks(name)) == 2


def running_tasks(service: str) -> set[tuple[str, str]]:
    """(task id, node) of every task of ``service`` with a live process."""
    return {(env["SHOAL_TASK_ID"], env["SHOAL_NODE"]) for env in task_processes(service).values()}
