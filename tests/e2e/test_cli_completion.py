"""Shell completion of names from a live cluster, driven through real bash, zsh and fish.

The scripts are the ones ``shoal completion SHELL`` prints; the shells call
the installed ``shoal``, which asks the manager. A name is offered because it
exists now: a deleted service is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.shells import bash_complete, fish_complete, zsh_complete
from tests.e2e.cluster import Cluster, cluster_at

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_at(tmp_path_factory.mktemp("cli-completion")) as running:
        running.start_agent("cc-node")
        for name in ("cc-web", "cc-worker", "cc-gone"):
            running.apply(running.service(name, ["sleep", "300"]), f"{name}.yaml")
        running.cli("delete", "service", "cc-gone", "--no-wait")
        running.wait_running("cc-web", 1)
        running.wait_running("cc-worker", 1)
        yield running


def test_bash_completes_service_names_from_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    env = cluster.cli_env()
    assert bash_complete(tmp_path, "shoal get services cc-", env) == ["cc-web", "cc-worker"]
    assert bash_complete(tmp_path, "shoal logs cc-we", env) == ["cc-web"]
    assert bash_complete(tmp_path, "shoal logs cc-g", env) == []  # deleted: not offered
    assert bash_complete(tmp_path, "shoal delete service cc-", env) == ["cc-web", "cc-worker"]
    assert bash_complete(tmp_path, "shoal scale cc-w", env) == ["cc-web=", "cc-worker="]
    assert bash_complete(tmp_path, "shoal rollout undo cc-wo", env) == ["cc-worker"]
    assert bash_complete(tmp_path, "shoal get tasks --service cc-wo", env) == ["cc-worker"]


def test_bash_completes_nodes_and_tasks_and_follows_server_on_the_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = cluster.cli_env()
    assert bash_complete(tmp_path, "shoal node update cc-", env) == ["cc-node"]
    assert bash_complete(tmp_path, "shoal describe node ", env) == ["cc-node"]
    (web,) = cluster.running("cc-web")
    assert bash_complete(tmp_path, "shoal get tasks cc-web.", env) == [web["name"]]
    # The manager the line names is the one asked: here one that is not there.
    line = "shoal get --server 127.0.0.1:1 services cc-"
    assert bash_complete(tmp_path, line, env) == []
    line = f"shoal get --server {cluster.address} services cc-"
    assert bash_complete(tmp_path, line, env) == ["cc-web", "cc-worker"]


def test_zsh_and_fish_complete_service_names(cluster: Cluster, tmp_path: Path) -> None:
    env = cluster.cli_env()
    assert zsh_complete(tmp_path, "shoal describe service cc-w", env) == ["cc-web", "cc-worker"]
    assert sorted(fish_complete(tmp_path, "shoal describe service cc-w", env)) == [
        "cc-web",
        "cc-worker",
    ]
