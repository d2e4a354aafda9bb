"""Apply sets end to end: ``apply --prune``, ``shoal diff``, ``get -o yaml | apply``.

Real manager and agent processes; what was pruned is checked in ``/proc``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, cluster_at, task_processes, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        running.start_agent("n1")
        yield running


def spec(cluster: Cluster, name: str, replicas: int | None = None) -> str:
    # Only the fields that must be given: everything else stays at its default,
    # which is what `shoal diff` must not report as a difference.
    return cluster.service(name, ["sleep", "300"], replicas=replicas)


def write_set(cluster: Cluster, directory: Path, *names: str) -> None:
    directory.mkdir(exist_ok=True)
    for name in names:
        (directory / f"{name}.yaml").write_text(spec(cluster, name))


def task_ids(cluster: Cluster, service: str) -> set[str]:
    return {t["id"] for t in cluster.running(service)}


def test_prune_removes_only_what_the_set_created_and_left_the_files(
    cluster: Cluster, tmp_path: Path
) -> None:
    specs = tmp_path / "web-tier"
    write_set(cluster, specs, "as-a", "as-b", "as-c")
    outsider = cluster.apply(spec(cluster, "as-outsider"), "outsider.yaml")
    assert "service/as-outsider created" in outsider.stdout

    first = cluster.cli("apply", "-f", str(specs), "--prune")
    assert sorted(first.stdout.split("\n")[:-1]) == [
        "service/as-a created (revision 1)",
        "service/as-b created (revision 1)",
        "service/as-c created (revision 1)",
    ]
    for name in ("as-a", "as-b", "as-c", "as-outsider"):
        cluster.wait_running(name, 1)
    kept = {name: task_ids(cluster, name) for name in ("as-b", "as-c")}
    assert cluster.call("GetApplySet", {"name": "web-tier"})["set"]["members"] == [
        {"kind": "Service", "name": n} for n in ("as-a", "as-b", "as-c")
    ]

    (specs / "as-a.yaml").unlink()
    dry = cluster.cli("apply", "-f", str(specs), "--prune", "--dry-run")
    assert "service/as-a pruned (dry run)" in dry.stdout
    assert task_ids(cluster, "as-a") and task_processes("as-a")

    pruned = cluster.cli("apply", "-f", str(specs), "--prune")
    assert "service/as-a pruned" in pruned.stdout
    assert "service/as-b unchanged" in pruned.stdout
    wait_for(lambda: not task_processes("as-a"), 30, "as-a's processes to exit")
    services = {s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]}
    assert services == {"as-b", "as-c", "as-outsider"}
    assert {name: task_ids(cluster, name) for name in kept} == kept
    assert task_processes("as-outsider")

    # An emptied directory would prune everything: refused unless asked for.
    for path in specs.iterdir():
        path.unlink()
    refused = cluster.cli("apply", "-f", str(specs), "--prune", check=False)
    assert refused.returncode == 1
    assert "--allow-empty" in refused.stderr and "as-b" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert task_ids(cluster, "as-b") == kept["as-b"]
    emptied = cluster.cli("apply", "-f", str(specs), "--prune", "--allow-empty")
    assert sorted(emptied.stdout.split("\n")[:-1]) == [
        "service/as-b pruned",
        "service/as-c pruned",
    ]
    wait_for(lambda: not task_processes("as-b") and not task_processes("as-c"), 30, "pruned")
    assert task_processes("as-outsider")


def test_a_service_belongs_to_one_set(cluster: Cluster, tmp_path: Path) -> None:
    write_set(cluster, tmp_path / "one", "own-x")
    cluster.cli("apply", "-f", str(tmp_path / "one"), "--prune")
    write_set(cluster, tmp_path / "two", "own-x")
    refused = cluster.cli("apply", "-f", str(tmp_path / "two"), "--prune", check=False)
    assert refused.returncode == 1
    assert "service/own-x belongs to apply set 'one'" in refused.stderr
    named = cluster.cli("apply", "-f", str(tmp_path / "two"), "--set", "one", "--prune")
    assert "service/own-x unchanged" in named.stdout


def shoal_diff(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.cli("diff", *args, check=False)


def test_diff_exit_codes_and_no_phantom_differences(cluster: Cluster, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write_set(cluster, specs, "df-a", "df-b")
    cluster.cli("apply", "-f", str(specs), "--prune")

    same = shoal_diff(cluster, "-f", str(specs))
    assert (same.returncode, same.stdout, same.stderr) == (0, "", "")
    assert shoal_diff(cluster, "-f", str(specs), "--prune").returncode == 0

    (specs / "df-a.yaml").write_text(spec(cluster, "df-a", replicas=2))
    edited = shoal_diff(cluster, "-f", str(specs))
    assert edited.returncode == 1, edited.stderr
    assert "--- live/service/df-a" in edited.stdout
    assert "-  replicas: 1\n" in edited.stdout and "+  replicas: 2\n" in edited.stdout
    assert "df-b" not in edited.stdout
    assert len(cluster.running("df-a")) == 1  # diff changed nothing

    (specs / "df-b.yaml").unlink()
    (specs / "df-new.yaml").write_text(spec(cluster, "df-new"))
    pruning = shoal_diff(cluster, "-f", str(specs), "--prune")
    assert pruning.returncode == 1
    assert "--- live/service/df-b\n+++ /dev/null" in pruning.stdout
    assert "--- /dev/null\n+++ wanted/service/df-new" in pruning.stdout
    assert "df-b" not in shoal_diff(cluster, "-f", str(specs)).stdout

    (specs / "df-new.yaml").write_text(
        "apiVersion: shoal/v1\nkind: Service\nmetadata:\n  name: df-new\n"
        "spec:\n  replicas: -1\n  template: {command: [sleep, '1']}\n"
    )
    broken = shoal_diff(cluster, "-f", str(specs))
    assert broken.returncode == 2
    assert f"{specs / 'df-new.yaml'}:6: spec.replicas:" in broken.stderr
    assert "Traceback" not in broken.stderr

    missing = shoal_diff(cluster, "-f", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "nope: no such file or directory" in missing.stderr
    services = {s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]}
    assert services == {"df-a", "df-b"}


def test_prune_of_a_missing_path_applies_nothing(cluster: Cluster, tmp_path: Path) -> None:
    write_set(cluster, tmp_path / "real", "mp-a")
    cluster.cli("apply", "-f", str(tmp_path / "real"), "--prune", "--set", "real")
    result = cluster.cli(
        "apply", "-f", str(tmp_path / "missing"), "--prune", "--set", "real", check=False
    )
    assert result.returncode == 1
    assert "missing: no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert [s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]] == [
        "mp-a"
    ]


def test_get_yaml_applies_back_unchanged(cluster: Cluster, tmp_path: Path) -> None:
    cluster.apply(spec(cluster, "rt-a", replicas=2), "a.yaml")
    cluster.apply(spec(cluster, "rt-b"), "b.yaml")
    cluster.wait_running("rt-a", 2)
    before = {s["metadata"]["name"]: s for s in cluster.call("Get", {"kind": "services"})["items"]}

    one = cluster.cli("get", "services", "rt-a", "-o", "yaml").stdout
    assert "status:" in one and "generation:" in one
    applied = subprocess.run(
        [sys.executable, "-m", "shoal", "apply", "-f", "-", "--server", cluster.address],
        input=one,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert applied.stdout == "service/rt-a unchanged\n"

    listing = cluster.cli("get", "services", "-o", "yaml").stdout
    assert listing.startswith("items:")
    applied = subprocess.run(
        [sys.executable, "-m", "shoal", "apply", "-f", "-", "--server", cluster.address],
        input=listing,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert applied.stdout == "service/rt-a unchanged\nservice/rt-b unchanged\n"
    after = {s["metadata"]["name"]: s for s in cluster.call("Get", {"kind": "services"})["items"]}
    for name in before:
        assert after[name]["metadata"]["generation"] == before[name]["metadata"]["generation"]
