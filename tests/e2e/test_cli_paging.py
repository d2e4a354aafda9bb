"""``shoal get tasks`` page by page against a real manager, with a few thousand sim tasks.

The listing is read in pages (``--chunk-size``) and printed as they come: each
task once, one table with one header, one valid JSON or YAML document; and
``--limit`` stops early and says how many more there are. The tasks run on a
fleet of simulated nodes, so their states change while they are listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.e2e.cluster import Cluster, cluster_at, wait_for

pytestmark = pytest.mark.slow

REPLICAS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_at(tmp_path_factory.mktemp("cli-paging")) as running:
        running.start_fleet("pg", 15)
        template = {"runtime": "sim"}
        running.apply(running.service("pg-big", ["sim"], replicas=REPLICAS, template=template))
        running.apply(running.service("pg-small", ["sim"], replicas=3, template=template))

        def created() -> bool:
            listed = running.cli("get", "tasks", "--service", "pg-big", "-o", "json", timeout=120)
            return len(json.loads(listed.stdout)["items"]) == REPLICAS

        wait_for(created, 120, f"{REPLICAS} tasks of pg-big", interval=1)
        yield running


def test_json_pages_make_one_document_with_every_task_once(cluster: Cluster) -> None:
    listed = cluster.cli("get", "tasks", "-o", "json", "--chunk-size", "700", timeout=120)
    items = json.loads(listed.stdout)["items"]
    ids = [t["id"] for t in items]
    assert len(ids) == len(set(ids)) == REPLICAS + 3
    assert [t["service"] for t in items] == ["pg-big"] * REPLICAS + ["pg-small"] * 3
    slots = [t["slot"] for t in items if t["service"] == "pg-big"]
    assert slots == sorted(slots) and set(slots) == set(range(1, REPLICAS + 1))


def test_a_table_in_pages_has_one_header_and_a_row_per_task(cluster: Cluster) -> None:
    listed = cluster.cli("get", "tasks", "--service", "pg-big", "--chunk-size", "250")
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SERVICE", "SLOT"]
    assert sum(1 for line in lines if line.startswith("NAME ")) == 1
    rows = [line.split()[0] for line in lines[1:]]
    assert len(rows) == len(set(rows)) == REPLICAS


def test_yaml_pages_make_one_document(cluster: Cluster) -> None:
    listed = cluster.cli("get", "tasks", "--service", "pg-big", "-o", "yaml", "--chunk-size", "999")
    items = yaml.safe_load(listed.stdout)["items"]
    assert len({t["id"] for t in items}) == REPLICAS


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_limit_prints_the_first_tasks_and_says_how_many_more(cluster: Cluster, fmt: str) -> None:
    listed = cluster.cli("get", "tasks", "--limit", "10", "--chunk-size", "4", "-o", fmt)
    if fmt == "json":
        items = json.loads(listed.stdout)["items"]
        assert [t["slot"] for t in items] == list(range(1, 11))
    else:
        assert len(listed.stdout.splitlines()) == 11  # the header and 10 tasks
    assert f"{REPLICAS + 3 - 10} more tasks not shown (--limit 10)" in listed.stderr


def test_nodes_show_their_task_counts(cluster: Cluster) -> None:
    def counts() -> list[int]:
        listed = cluster.cli("get", "nodes")
        return [int(line.split()[4]) for line in listed.stdout.splitlines()[1:]]

    wait_for(lambda: sum(counts()) == REPLICAS + 3, 60, "every task placed", interval=1)
    assert len(counts()) == 15


def test_a_service_that_does_not_exist_is_not_found(cluster: Cluster) -> None:
    listed = cluster.cli("get", "tasks", "--service", "pg-nope", check=False)
    assert listed.returncode == 1
    assert "not found" in listed.stderr
