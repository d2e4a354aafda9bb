"""``shoal exec`` end to end: a real manager and agent, real Docker and Podman containers.

The command's output comes back on the caller's stdout and stderr, shoal exits with
its exit code; what cannot run a command (a process task, an ended task) and who
may not (a viewer) are refused with one line and exit 1.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, cluster_at, shoal_cmd, wait_for
from tests.e2e.test_containers import container_service
from tests.engines import ENGINES, ensure_test_image, remove_node_containers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> str:
    return f"x{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, node: str) -> Iterator[Cluster]:
    for engine in ENGINES:
        ensure_test_image(engine)
    with cluster_at(tmp_path_factory.mktemp("exec")) as running:
        running.start_agent(node)
        yield running
    for engine in ENGINES:
        remove_node_containers(engine, node)


def shoal_exec(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``shoal exec --server ADDRESS ARGS...`` (the options go before the command's ``--``)."""
    return subprocess.run(
        shoal_cmd("exec", "--server", cluster.address, *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.cli_env(),
    )


def running_task(cluster: Cluster, service: str) -> dict[str, object]:
    (task,) = cluster.wait_running(service, 1, timeout=60)
    return task


@pytest.mark.parametrize("engine", ENGINES)
def test_exec_streams_output_and_exits_with_the_command_code(cluster: Cluster, engine: str) -> None:
    service = f"ex-{engine}"
    cluster.apply(container_service(service, engine, args=[]), name=f"{service}.yaml")
    task = running_task(cluster, service)
    name, task_id = str(task["name"]), str(task["id"])

    hello = shoal_exec(cluster, name, "--", "sh", "-c", "echo hi; echo there")
    assert (hello.returncode, hello.stdout, hello.stderr) == (0, "hi\nthere\n", "")

    failing = shoal_exec(cluster, task_id[:8], "--", "sh", "-c", "echo err >&2; exit 3")
    assert (failing.returncode, failing.stdout, failing.stderr) == (3, "", "err\n")

    # It ran inside the container: its hostname is the container's, not the node's.
    hostname = shoal_exec(cluster, name, "--", "cat", "/etc/hostname").stdout.strip()
    assert (
        hostname
        and hostname != subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    )

    missing = shoal_exec(cluster, name, "--", "no-such-command")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


def test_exec_is_refused_for_process_ended_and_unknown_tasks(cluster: Cluster) -> None:
    cluster.apply(cluster.service("ex-proc", ["sleep", "300"]), name="proc.yaml")
    proc = running_task(cluster, "ex-proc")
    refused = shoal_exec(cluster, str(proc["name"]), "--", "true")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "error: exec needs a container task; this task runs on the process runtime"
    )

    cluster.apply(
        container_service("ex-done", "docker", restart="none", command=["true"]),
        name="done.yaml",
    )
    wait_for(
        lambda: any(t["status"]["state"] == "complete" for t in cluster.tasks("ex-done", all=True)),
        60,
        "the task to complete",
    )
    (done,) = cluster.tasks("ex-done", all=True)
    ended = shoal_exec(cluster, str(done["name"]), "--", "true")
    assert ended.returncode == 1
    assert f"task {done['name']} is not running" in ended.stderr

    unknown = shoal_exec(cluster, "no-such-task", "--", "true")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert "Traceback" not in refused.stderr + ended.stderr + unknown.stderr


def test_a_viewer_may_not_exec(cluster: Cluster, tmp_path: Path) -> None:
    cluster.apply(container_service("ex-viewer", "docker", args=[]), name="viewer.yaml")
    task = running_task(cluster, "ex-viewer")
    bundle = tmp_path / "vic.yaml"
    cluster.cli("user", "add", "vic", "--role", "viewer", "-o", str(bundle))
    env = {**cluster.cli_env(), "SHOAL_CONFIG": str(tmp_path / "config.yaml")}
    env.pop("SHOAL_STATE_DIR")
    env["XDG_STATE_HOME"] = str(tmp_path / "nothing-here")

    def as_vic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(shoal_cmd(*args), env=env, capture_output=True, text=True, timeout=60)

    assert as_vic("context", "import", str(bundle), "--name", "vic").returncode == 0
    marker = "/tmp/vic-was-here"
    refused = as_vic("exec", str(task["name"]), "--", "touch", marker)
    assert refused.returncode == 1
    assert "role viewer, which may only read" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Nothing ran: the file the command would have made is not in the container.
    check = shoal_exec(cluster, str(task["name"]), "--", "ls", marker)
    assert check.returncode != 0
    audit = [
        json.loads(line)
        for line in (cluster.root / "manager" / "audit.log").read_text().splitlines()
    ]
    execs = [e for e in audit if e["method"] == "Exec"]
    assert any(e["user"] == "vic" and e["outcome"] == "PERMISSION_DENIED" for e in execs)
    assert any(e["user"] == "admin" and e["outcome"] == "OK" for e in execs)
