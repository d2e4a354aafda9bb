"""The client commands against a live cluster, checked for what a user sees.

One manager and one agent serve the whole module (starting them is most of a
test's cost); every test uses its own service names (``cl-...``) and puts the
node back the way it found it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from shoal.api.transport import CONTROL_SERVICE, Client, open_channel
from shoal.errors import ApiError, SpecError
from shoal.logtimes import parse_time
from shoal.manifest import load_paths
from tests.cli.test_imports import PROBE, offending
from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    service_yaml,
    shoal_cmd,
    task_processes,
    wait_for,
)
from tests.engines import TEST_IMAGE, ensure_test_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_at(tmp_path_factory.mktemp("cli-live")) as running:
        running.start_agent("n1")
        yield running


def stored_services(cluster: Cluster) -> list[dict[str, Any]]:
    """``get services -o json`` without the status, which is computed, not stored."""
    items = json.loads(cluster.cli("get", "services", "-o", "json").stdout)["items"]
    return [{k: v for k, v in item.items() if k != "status"} for item in items]


def apply_stdin(cluster: Cluster, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        shoal_cmd("apply", "-f", "-", "--server", cluster.address),
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )


# ----------------------------------------------------------------- get -o


def test_get_json_and_yaml_shapes_and_yaml_applies_back_unchanged(cluster: Cluster) -> None:
    cluster.apply(cluster.service("cl-json", ["sleep", "300"], replicas=2))
    cluster.wait_running("cl-json", 2)

    listed = json.loads(cluster.cli("get", "services", "-o", "json").stdout)
    assert set(listed) == {"items"}
    (view,) = [s for s in listed["items"] if s["metadata"]["name"] == "cl-json"]
    assert set(view) >= {"metadata", "spec", "status"}
    assert view["spec"]["replicas"] == 2
    assert view["status"]["desiredTasks"] == 2
    assert view["status"]["runningTasks"] == 2

    one = json.loads(cluster.cli("get", "services", "cl-json", "-o", "json").stdout)
    assert one["metadata"]["name"] == "cl-json"
    assert one["spec"] == view["spec"]

    tasks = json.loads(cluster.cli("get", "tasks", "--service", "cl-json", "-o", "json").stdout)
    assert [t["status"]["state"] for t in tasks["items"]] == ["running", "running"]

    exported = cluster.cli("get", "svc", "cl-json", "-o", "yaml").stdout
    assert yaml.safe_load(exported)["metadata"]["name"] == "cl-json"
    again = apply_stdin(cluster, exported)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "service/cl-json unchanged"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["get", "services"], id="get-services"),
        # get nodes also counts each node's tasks, a second look after the first call.
        pytest.param(["get", "nodes"], id="get-nodes"),
        pytest.param(["get", "tasks", "-o", "wide"], id="get-tasks"),
        pytest.param(["describe", "service", "cl-unary"], id="describe"),
        pytest.param(["cluster", "status"], id="cluster-status"),
    ],
)
def test_unary_verbs_against_a_manager_load_neither_grpc_nor_asyncio(
    cluster: Cluster, argv: list[str]
) -> None:
    # A unary command's whole run, answer included, on the CLI's own client:
    # what makes `shoal get services` start fast (bench/cli.py measures it).
    cluster.apply(cluster.service("cl-unary", ["sleep", "300"]))
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv, "--server", cluster.address],
        env=cluster.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    *printed, last = result.stdout.strip().splitlines()
    report = json.loads(last)
    assert report["code"] == 0, result.stderr
    modules = set(report["modules"])
    assert offending(modules, ("grpc", "asyncio", "pydantic")) == []
    if argv == ["get", "services"]:
        assert any(line.startswith("cl-unary ") for line in printed), result.stdout
        # What else made it slower: host names through the idna codec, argparse's
        # terminal width through shutil (bench/cli.py measures the time).
        slow = ("encodings.idna", "shutil")
        assert offending(modules, slow) == []


# -------------------------------------------------------------- apply checks


def test_apply_dry_run_changes_nothing(cluster: Cluster) -> None:
    before = stored_services(cluster)
    spec = cluster.root / "cl-dry.yaml"
    spec.write_text(cluster.service("cl-dry", ["sleep", "300"], replicas=1))

    result = cluster.cli("apply", "-f", str(spec), "--dry-run")

    assert result.stdout.strip() == "service/cl-dry created (dry run)"
    assert stored_services(cluster) == before
    missing = cluster.cli("get", "services", "cl-dry", check=False)
    assert missing.returncode == 1
    assert cluster.tasks("cl-dry", all=True) == []


def test_apply_directory_with_bad_files_changes_nothing_and_names_file_line_field(
    cluster: Cluster,
) -> None:
    # The CLI sends the documents as YAML gave them; the manager validates them and
    # says where each problem is, which the CLI names by file, line and field: the
    # very lines the loader that validates locally (shoal.manifest) gives.
    specs = cluster.root / "cl-specs"
    specs.mkdir()
    (specs / "good.yaml").write_text(
        yaml.safe_dump(json.loads(cluster.service("cl-good", ["sleep", "300"])), sort_keys=False)
    )
    bad = specs / "bad.yaml"
    bad.write_text(
        "apiVersion: shoal/v1\n"
        "kind: Service\n"
        "metadata:\n"
        "  name: cl-bad\n"
        "spec:\n"
        "  template:\n"
        "    command: [sleep, '300']\n"
        "    stopGracePeriod: 5x\n"
        "  placment: {}\n"
    )
    (specs / "list.yaml").write_text(
        "items:\n"
        "- apiVersion: shoal/v1\n"
        "  kind: Config\n"
        "  metadata: {name: cl-conf}\n"
        "  data: 7\n"
        "- apiVersion: shoal/v1\n"
        "  kind: Service\n"
        "  metadata: {name: cl-listed}\n"
        "  spec:\n"
        "    replicas: lots\n"
        "    template: {command: [sleep, '300']}\n"
    )
    with pytest.raises(SpecError) as local:
        load_paths([specs])
    before = stored_services(cluster)

    for dry_run in ((), ("--dry-run",)):
        result = cluster.cli("apply", "-f", str(specs), *dry_run, check=False)

        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"error: {len(local.value.problems)} problems in the spec; nothing was applied:",
            *local.value.problems,
        ]
        assert f"{bad}:8: spec.template.stopGracePeriod: invalid duration '5x'" in result.stderr
        assert f"{specs / 'list.yaml'}:10: items[1].spec.replicas: " in result.stderr
        assert f"{specs / 'list.yaml'}:5: items[0].data: " in result.stderr
        assert stored_services(cluster) == before
        assert cluster.cli("get", "services", "cl-good", check=False).returncode == 1


def test_unknown_runtime_is_refused_by_the_manager_naming_the_field(cluster: Cluster) -> None:
    # The CLI checks a spec's structure without loading runtime plugins; which
    # runtimes exist is the manager's to say, and it says it before writing.
    good = json.loads(cluster.service("cl-rt-good", ["sleep", "300"]))
    bad = json.loads(cluster.service("cl-rt-bad", ["sleep", "300"]))
    bad["spec"]["template"]["runtime"] = "dockerd"
    spec = cluster.root / "cl-runtime.yaml"
    spec.write_text(yaml.safe_dump_all([good, bad], sort_keys=False))
    before = stored_services(cluster)

    result = cluster.cli("apply", "-f", str(spec), check=False)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = spec.read_text().splitlines().index("    runtime: dockerd") + 1
    assert (
        f"{spec}:{line}: spec.template.runtime: unknown runtime 'dockerd' (known: " in result.stderr
    )
    assert "process" in result.stderr.split("known: ")[1]
    assert stored_services(cluster) == before  # the good one was not written either


# ------------------------------------------------------------------ describe


def test_describe_shows_tasks_events_and_why_a_slot_is_not_restarted(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "cl-desc",
            ["sh", "-c", "exit 4"],
            replicas=1,
            restartPolicy={"condition": "none", "delay": "100ms"},
        )
    )
    wait_for(
        lambda: [t["status"]["state"] for t in cluster.tasks("cl-desc", all=True)] == ["failed"],
        10,
        "cl-desc's task to fail",
    )
    (task,) = cluster.tasks("cl-desc", all=True)

    described = cluster.cli("describe", "service", "cl-desc").stdout

    tasks_section = described.split("\nTasks:\n")[1].split("\nNotes:\n")[0]
    assert task["name"] in tasks_section
    row = next(line for line in tasks_section.splitlines() if task["name"] in line)
    assert "failed" in row.split() and "4" in row.split()
    notes = described.split("\nNotes:\n")[1].split("\nEvents:\n")[0]
    assert "slot 1: failed; restart condition is none" in notes
    events = described.split("\nEvents:\n")[1]
    assert re.search(r"Normal\s+Applied\s+created", events), events


# ---------------------------------------------------------------------- logs


def test_logs_tail_prints_last_lines_of_each_task_with_its_name(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "cl-logs",
            [
                "sh",
                "-c",
                'for i in 1 2 3 4 5; do echo "line $i of $SHOAL_TASK_SLOT"; done; sleep 300',
            ],
            replicas=2,
        )
    )
    names = {t["slot"]: t["name"] for t in cluster.wait_running("cl-logs", 2)}

    def tail() -> list[str] | None:
        lines = cluster.cli("logs", "cl-logs", "--tail", "2").stdout.splitlines()
        return lines if len(lines) == 4 else None

    wait_for(tail, 10, "two lines from each task")
    lines = tail()
    assert lines is not None
    expected = {f"{names[slot]} | line {i} of {slot}" for slot in (1, 2) for i in (4, 5)}
    assert set(lines) == expected


async def logs_refusal(cluster: Cluster, request: dict[str, Any]) -> ApiError:
    """The error the Control API's ``Logs`` answers ``request`` with."""
    channel = open_channel(cluster.address, cluster.credentials)
    try:
        async for _ in Client(channel, CONTROL_SERVICE).stream("Logs", request):
            pass
    except ApiError as exc:
        return exc
    finally:
        await channel.close()
    raise AssertionError(f"Logs took {request}")


@pytest.mark.parametrize("runtime", ["docker", "process"])
def test_logs_timestamps_since_and_two_tasks_in_the_order_written(
    cluster: Cluster, runtime: str
) -> None:
    # Docker stamps each line where it is written; the process runtime's agent
    # records when each task's log grew.
    script = 'echo "one $SHOAL_TASK_SLOT"; sleep 3; echo "two $SHOAL_TASK_SLOT"; sleep 300'
    name = f"cl-logtime-{runtime}"
    template: dict[str, object] = {"runtime": runtime, "stopGracePeriod": "1s"}
    if runtime == "docker":
        ensure_test_image("docker")
        template.update(image=TEST_IMAGE, init=True)
    cluster.apply(cluster.service(name, ["sh", "-c", script], 2, template=template))
    try:
        cluster.wait_running(name, 2, timeout=60)

        def stamped(*extra: str) -> list[tuple[datetime, str]] | None:
            out = cluster.cli("logs", name, "--timestamps", "--no-prefix", *extra).stdout
            lines = [line.partition(" ") for line in out.splitlines()]
            return [(parse_time(stamp), text) for stamp, _, text in lines]

        wait_for(lambda: len(stamped() or []) == 4, 30, "two lines from each task")
        lines = stamped()
        assert lines is not None
        # Both tasks started within the 3 s between their lines: all "one"s come first.
        assert [text.split()[0] for _, text in lines] == ["one", "one", "two", "two"]
        times = [at for at, _ in lines]
        assert times == sorted(times)
        between = times[1] + (times[2] - times[1]) / 2
        later = stamped("--since", between.isoformat())
        assert later == lines[2:]
        assert stamped("--since", "1h") == lines
        bad = cluster.cli("logs", name, "--since", "soon", check=False)
        assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
        refused = asyncio.run(logs_refusal(cluster, {"service": name, "since": "soon"}))
        assert refused.code == "INVALID_ARGUMENT" and refused.message.startswith("since: ")
    finally:
        cluster.cli("delete", "service", name, "--ignore-not-found")


def test_logs_follow_streams_new_lines(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "cl-follow",
            ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done'],
            replicas=1,
        )
    )
    (task,) = cluster.wait_running("cl-follow", 1)
    follower = subprocess.Popen(
        shoal_cmd("logs", "cl-follow", "-f", "--tail", "1", "--server", cluster.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    stdout = follower.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        ticks: list[int] = []
        deadline = time.monotonic() + 10
        while len(ticks) < 4 and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            prefix, _, text = line.rstrip("\n").partition(" | ")
            assert prefix == task["name"]
            ticks.append(int(text.removeprefix("tick ")))
        # The first is the tail; the rest were printed after `logs -f` started.
        assert len(ticks) == 4, ticks
        assert ticks == sorted(ticks) and len(set(ticks)) == 4
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(10)
    assert code == 0
    assert follower.stderr is not None
    assert "Traceback" not in follower.stderr.read()


def test_logs_follow_follows_the_service_not_its_first_tasks(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "cl-svc-logs",
            ["sh", "-c", 'while true; do echo "from $SHOAL_TASK_ID"; sleep 0.2; done'],
            replicas=1,
        )
    )
    (first,) = cluster.wait_running("cl-svc-logs", 1)
    follower = subprocess.Popen(
        shoal_cmd("logs", "cl-svc-logs", "-f", "--server", cluster.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    stdout = follower.stdout
    seen: set[str] = set()  # task ids whose lines arrived

    def read() -> None:
        for line in stdout:
            seen.add(line.rstrip("\n").rpartition("from ")[2])

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: first["id"] in seen, 10, "the first task's lines")
        cluster.cli("scale", "cl-svc-logs=2")
        running = cluster.wait_running("cl-svc-logs", 2)
        (added,) = [t for t in running if t["id"] != first["id"]]
        wait_for(lambda: added["id"] in seen, 15, "the scaled-up task's lines")
        os.kill(int(first["status"]["pid"]), signal.SIGKILL)
        wait_for(
            lambda: any(
                t["slot"] == first["slot"] and t["id"] != first["id"]
                for t in cluster.running("cl-svc-logs")
            ),
            20,
            "a replacement in the first slot",
        )
        (replacement,) = [t for t in cluster.running("cl-svc-logs") if t["slot"] == first["slot"]]
        wait_for(lambda: replacement["id"] in seen, 15, "the replacement's lines")
        assert follower.poll() is None  # the first task ended; the service goes on
    finally:
        follower.send_signal(signal.SIGINT)
        code = follower.wait(10)
    assert code == 0
    assert follower.stderr is not None
    assert "Traceback" not in follower.stderr.read()


def test_get_watch_prints_each_task_again_when_it_changes(cluster: Cluster) -> None:
    cluster.apply(cluster.service("cl-getw", ["sleep", "300"], replicas=1))
    (first,) = cluster.wait_running("cl-getw", 1)
    argv = shoal_cmd("get", "tasks", "--service", "cl-getw", "-w", "-o", "json")
    watcher = subprocess.Popen(
        [*argv, "--server", cluster.address], stdout=subprocess.PIPE, text=True
    )
    assert watcher.stdout is not None
    stdout = watcher.stdout
    printed: list[dict[str, Any]] = []

    def read() -> None:
        for line in stdout:
            printed.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: any(t["id"] == first["id"] for t in printed), 10, "the list")
        cluster.cli("scale", "cl-getw=2")
        wait_for(
            lambda: any(
                t["id"] != first["id"] and t["status"]["state"] == "running" for t in printed
            ),
            20,
            "the new task printed once it runs",
        )
        os.kill(int(first["status"]["pid"]), signal.SIGKILL)
        wait_for(
            lambda: any(
                t["id"] == first["id"] and t["status"]["state"] == "failed" for t in printed
            ),
            20,
            "the killed task printed again as failed",
        )
        assert watcher.poll() is None
    finally:
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(10)
    assert code == 0


# ---------------------------------------------------------------------- node


def test_node_label_decides_placement(cluster: Cluster) -> None:
    result = cluster.cli("node", "update", "n1", "--label-add", "zone=x")
    assert "node/n1 updated" in result.stdout
    try:
        cluster.apply(
            cluster.service(
                "cl-zone-x",
                ["sleep", "300"],
                placement={"constraints": ["node.labels.zone == x"]},
            )
        )
        cluster.apply(
            cluster.service(
                "cl-zone-y",
                ["sleep", "300"],
                placement={"constraints": ["node.labels.zone == y"]},
            ),
            name="zone-y.yaml",
        )
        (placed,) = cluster.wait_running("cl-zone-x", 1)
        assert placed["nodeId"] == "n1"
        wait_for(
            lambda: "no suitable node" in str(cluster.tasks("cl-zone-y")[0]["status"]),
            10,
            "cl-zone-y to be refused a node",
        )
        (waiting,) = cluster.tasks("cl-zone-y")
        assert waiting["status"]["state"] == "pending" and not waiting.get("nodeId")
    finally:
        cluster.cli("delete", "service", "cl-zone-x", "cl-zone-y", "--ignore-not-found")
        cluster.cli("node", "update", "n1", "--label-rm", "zone")


def test_paused_node_keeps_its_tasks_and_takes_no_new_ones(cluster: Cluster) -> None:
    cluster.apply(cluster.service("cl-pause", ["sleep", "300"], replicas=1))
    (first,) = cluster.wait_running("cl-pause", 1)
    cluster.cli("node", "update", "n1", "--availability", "pause")
    try:
        cluster.cli("scale", "cl-pause=2")

        def pending_row() -> str | None:
            table = cluster.cli("get", "tasks", "--service", "cl-pause").stdout
            return next((row for row in table.splitlines() if " pending " in row), None)

        wait_for(
            lambda: "no suitable node" in (pending_row() or ""),
            10,
            "the new task to wait for a node",
        )
        time.sleep(0.5)
        assert [t["id"] for t in cluster.running("cl-pause")] == [first["id"]]
        assert first["status"]["pid"] in task_processes("cl-pause")
    finally:
        cluster.cli("node", "update", "n1", "--availability", "active")
    running = cluster.wait_running("cl-pause", 2, timeout=10)
    assert first["id"] in {t["id"] for t in running}


def test_agent_with_wrong_token_exits_1_and_never_joins(cluster: Cluster) -> None:
    # Well formed and pinned to the right CA: only the secret is wrong.
    digest = cluster.token.split("-")[2]
    result = subprocess.run(
        shoal_cmd(
            "agent",
            "--manager",
            cluster.address,
            "--join",
            cluster.join_address,
            "--token",
            f"SHOAL-1-{digest}-{'0' * 32}",
            "--name",
            "cl-intruder",
            "--state-dir",
            str(cluster.root / "agents" / "cl-intruder"),
        ),
        capture_output=True,
        text=True,
        timeout=20,
    )

    assert result.returncode == 1
    assert "error: join token refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert cluster.node_state("cl-intruder") is None
    assert cluster.cli("get", "nodes", "cl-intruder", check=False).returncode == 1


# -------------------------------------------------------------------- delete


def test_delete_file_removes_its_services_and_waits_for_their_processes(
    cluster: Cluster,
) -> None:
    spec = cluster.root / "cl-pair.yaml"
    spec.write_text(
        "---\n".join(
            yaml.safe_dump(json.loads(service_yaml(name, ["sleep", "300"], 2, str(cluster.root))))
            for name in ("cl-del-a", "cl-del-b")
        )
    )
    cluster.cli("apply", "-f", str(spec))
    cluster.wait_running("cl-del-a", 2)
    cluster.wait_running("cl-del-b", 2)
    cluster.apply(cluster.service("cl-del-keep", ["sleep", "300"]), name="keep.yaml")
    cluster.wait_running("cl-del-keep", 1)

    result = cluster.cli("delete", "-f", str(spec))

    assert result.stdout.splitlines() == ["service/cl-del-a deleted", "service/cl-del-b deleted"]
    assert not task_processes("cl-del-a") and not task_processes("cl-del-b")
    names = {s["metadata"]["name"] for s in stored_services(cluster)}
    assert "cl-del-keep" in names and not names & {"cl-del-a", "cl-del-b"}
    assert len(cluster.running("cl-del-keep")) == 1


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("scale", "cl-nope=3"), id="scale"),
        pytest.param(("get", "services", "cl-nope"), id="get-service"),
        pytest.param(("get", "tasks", "--service", "cl-nope"), id="get-tasks-of-service"),
        pytest.param(("logs", "cl-nope"), id="logs"),
        pytest.param(("describe", "service", "cl-nope"), id="describe"),
        pytest.param(("delete", "service", "cl-nope"), id="delete"),
    ],
)
def test_unknown_service_is_exit_1_not_found(cluster: Cluster, args: tuple[str, ...]) -> None:
    result = cluster.cli(*args, check=False)

    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# ----------------------------------------------------------------- -l selectors


def labelled(cluster: Cluster, name: str, labels: dict[str, str], command: list[str]) -> str:
    doc = json.loads(cluster.service(name, command))
    doc["metadata"]["labels"] = labels
    return json.dumps(doc)


def test_selectors_filter_get_logs_and_delete_on_the_manager(cluster: Cluster) -> None:
    talk = ["sh", "-c", 'echo "hello from $SHOAL_SERVICE"; sleep 300']
    for name, labels in (
        ("cl-sel-web", {"app": "cl-sel", "tier": "front"}),
        ("cl-sel-api", {"app": "cl-sel", "tier": "back"}),
        ("cl-sel-other", {"app": "cl-other"}),
    ):
        cluster.apply(labelled(cluster, name, labels, talk), f"{name}.yaml")
    for name in ("cl-sel-web", "cl-sel-api", "cl-sel-other"):
        cluster.wait_running(name, 1)

    def names(*args: str) -> list[str]:
        items = json.loads(cluster.cli("get", *args, "-o", "json").stdout)["items"]
        return sorted(i["metadata"]["name"] if "metadata" in i else i["service"] for i in items)

    assert names("services", "-l", "app=cl-sel") == ["cl-sel-api", "cl-sel-web"]
    assert names("services", "-l", "app=cl-sel,tier!=front") == ["cl-sel-api"]
    assert names("services", "-l", "tier") == ["cl-sel-api", "cl-sel-web"]
    assert names("services", "-l", "app=cl-other") == ["cl-sel-other"]
    assert names("tasks", "-l", "tier=front") == ["cl-sel-web"]  # by their service's labels
    nobody = cluster.cli("get", "services", "-l", "app=cl-nobody")
    assert nobody.stdout == "" and nobody.stderr == "No services found.\n"

    # The manager filters (a client without -l support sends the field itself) and
    # refuses a bad selector naming the field.
    reply = cluster.call("Get", {"kind": "services", "selector": "tier=back"})
    assert [s["metadata"]["name"] for s in reply["items"]] == ["cl-sel-api"]
    with pytest.raises(ApiError) as refused:
        cluster.call("Get", {"kind": "services", "selector": "app in (a)"})
    assert refused.value.code == "INVALID_ARGUMENT"
    assert str(refused.value.message).startswith("selector: invalid selector")
    # The CLI checks before it connects: a usage error, exit 2.
    bad = cluster.cli("get", "services", "-l", "app=", "-l", "a b", check=False)
    assert bad.returncode == 2 and "invalid selector 'a b'" in bad.stderr

    def hello() -> set[str] | None:
        lines = set(cluster.cli("logs", "-l", "app=cl-sel", "--no-prefix").stdout.splitlines())
        return lines if len(lines) == 2 else None

    wait_for(hello, 10, "a line from each selected service")
    assert hello() == {"hello from cl-sel-web", "hello from cl-sel-api"}

    deleted = cluster.cli("delete", "-l", "app=cl-sel")
    assert deleted.stdout.splitlines() == [
        "service/cl-sel-api deleted",
        "service/cl-sel-web deleted",
    ]
    assert not task_processes("cl-sel-web") and not task_processes("cl-sel-api")
    assert names("services", "-l", "app") == ["cl-sel-other"]
    assert task_processes("cl-sel-other") and len(cluster.running("cl-sel-other")) == 1
    again = cluster.cli("delete", "service", "-l", "app=cl-sel")
    assert again.stdout == "" and again.stderr == "No services match app=cl-sel.\n"


def test_logs_of_one_task_by_name_id_or_id_prefix(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "cl-one-task", ["sh", "-c", 'echo "slot $SHOAL_TASK_SLOT"; sleep 300'], replicas=2
        )
    )
    tasks = {t["slot"]: t for t in cluster.wait_running("cl-one-task", 2)}
    second = tasks[2]
    wait_for(
        lambda: len(cluster.cli("logs", "cl-one-task").stdout.splitlines()) == 2, 10, "two lines"
    )
    for word in (second["name"], second["id"], second["id"][:10]):
        result = cluster.cli("logs", word)
        assert result.stdout.splitlines() == [f"{second['name']} | slot 2"], word
    missing = cluster.cli("logs", "cl-one-task.9.deadbeef", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "error: task 'cl-one-task.9.deadbeef' not found\n"


def test_delete_wait_says_what_it_waits_for_one_line_per_change(cluster: Cluster) -> None:
    slow_stop = ["sh", "-c", 'trap "sleep 2; exit 0" TERM; while true; do sleep 0.1; done']
    cluster.apply(cluster.service("cl-slow-stop", slow_stop, replicas=2))
    cluster.wait_running("cl-slow-stop", 2)

    result = cluster.cli("delete", "service", "cl-slow-stop")

    assert result.stdout == "service/cl-slow-stop deleted\n"
    # stderr is not a terminal here: a line per change, not one per poll (~0.5s).
    lines = result.stderr.splitlines()
    assert lines[0] == "waiting for tasks to stop (cl-slow-stop: 2 task(s))"
    assert len(lines) == len(set(lines)) <= 2
    assert not task_processes("cl-slow-stop")


def test_rollout_status_prints_its_result_on_stdout_and_progress_on_stderr(
    cluster: Cluster,
) -> None:
    update = {"update": {"parallelism": 1, "monitor": "2s"}}
    cluster.apply(cluster.service("cl-roll", ["sleep", "300"], replicas=2, **update))
    cluster.wait_running("cl-roll", 2)
    cluster.apply(cluster.service("cl-roll", ["sleep", "301"], replicas=2, **update))

    result = cluster.cli("rollout", "status", "cl-roll", "--timeout", "60s")

    # The result alone on stdout, for scripts; the steps on the way on stderr.
    assert result.stdout.splitlines() == [
        "service/cl-roll: completed, revision 2, batch 2/2, 2/2 updated: "
        "update completed: revision 2 on 2/2 slot(s)"
    ]
    steps = result.stderr.splitlines()
    # Each slot is monitored for 2s, so at least one step is seen before the end.
    assert any(line.startswith("service/cl-roll: updating, revision 2") for line in steps), steps
    assert all(line.startswith("service/cl-roll: ") for line in steps), steps
    assert len(steps) == len(set(steps))


def test_job_run_wait_shows_the_run_on_stderr_until_it_ends(cluster: Cluster) -> None:
    job = cluster.service(
        "cl-job", ["sleep", "1.5"], replicas=None, mode="replicated-job", job={"suspend": True}
    )
    cluster.apply(job)

    result = cluster.cli("job", "run", "cl-job", "--wait", "--timeout", "60s")

    assert result.stdout.splitlines() == [
        "job/cl-job: run requested",
        "job/cl-job: run 1 succeeded",
    ]
    assert "job/cl-job: run 1: 0 succeeded, 0 failed, 1 running" in result.stderr.splitlines()
