"""Sync end to end: a real git repository served by ``git daemon`` on loopback, a directory.

Real manager and agent processes; the Sync controller fetches with the ``git``
program over ``git://``. What runs is checked in ``/proc`` and through task ids.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import Cluster, cluster_at, free_port, task_processes, wait_for
from tests.gitserver import git_http_server

pytestmark = pytest.mark.slow

INTERVAL = "2s"
WAIT = 30.0  # generous: several intervals on a busy machine


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        running.start_agent("n1")
        yield running


def service_yaml(cluster: Cluster, name: str, replicas: int = 1) -> str:
    return (
        "apiVersion: shoal/v1\n"
        "kind: Service\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  replicas: {replicas}\n"
        "  template:\n"
        "    command: [sleep, '300']\n"
        f"    env: {{E2E_RUN: '{cluster.root}'}}\n"
        "    stopGracePeriod: 2s\n"
    )


def sync_yaml(name: str, source: dict[str, Any], **spec: Any) -> str:
    doc = {
        "apiVersion": "shoal/v1",
        "kind": "Sync",
        "metadata": {"name": name},
        "spec": {"source": source, "interval": INTERVAL, "timeout": "60s", **spec},
    }
    return yaml.safe_dump(doc, sort_keys=False)


class Repo:
    """A working clone that pushes to a bare repository ``git daemon`` serves."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "repos" / "ops.git"
        self.work = root / "work"
        self.bare.parent.mkdir(parents=True)
        self.git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        self.git(root, "init", "-q", "-b", "main", str(self.work))
        self.git(self.work, "config", "user.email", "ops@example.com")
        self.git(self.work, "config", "user.name", "ops")
        self.git(self.work, "remote", "add", "origin", str(self.bare))
        (self.work / "services").mkdir()

    @staticmethod
    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
        ).stdout.strip()

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        for name, text in files.items():
            path = self.work / "services" / name
            if text is None:
                path.unlink()
            else:
                path.write_text(text)
        self.git(self.work, "add", "-A")
        self.git(self.work, "commit", "-qm", message)
        self.git(self.work, "push", "-q", "origin", "main")
        return self.git(self.work, "rev-parse", "HEAD")


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 10, "git daemon to listen")
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def sync_status(cluster: Cluster, name: str) -> dict[str, Any]:
    items = cluster.call("Get", {"kind": "syncs", "name": name})["items"]
    return dict(items[0].get("status") or {})


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    for cond in sync_status(cluster, name).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return {}


def replicas(cluster: Cluster, name: str) -> int | None:
    reply = cluster.try_call("Get", {"kind": "services", "name": name})
    if not reply:
        return None
    return int(reply["items"][0]["spec"].get("replicas", 1))


def services(cluster: Cluster) -> set[str]:
    return {s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]}


def ids(cluster: Cluster, name: str) -> set[str]:
    return {t["id"] for t in cluster.running(name)}


def test_git_sync_applies_commits_stalls_on_broken_ones_corrects_drift_and_prunes(
    cluster: Cluster, tmp_path: Path
) -> None:
    repo = Repo(tmp_path)
    first = repo.commit(
        "web and api",
        {
            "web.yaml": service_yaml(cluster, "gs-web", 2),
            "api.yaml": service_yaml(cluster, "gs-api"),
        },
    )
    with git_daemon(repo.bare.parent) as base:
        source = {"git": {"url": f"{base}/ops.git", "ref": "main", "path": "services"}}
        applied = cluster.apply(sync_yaml("prod", source, prune=True), "sync.yaml")
        assert "sync/prod created" in applied.stdout
        wait_for(lambda: services(cluster) == {"gs-web", "gs-api"}, WAIT, "the first commit")
        cluster.wait_running("gs-web", 2)
        cluster.wait_running("gs-api", 1)
        wait_for(lambda: condition(cluster, "prod", "Ready").get("status") == "True", WAIT, "Ready")
        assert sync_status(cluster, "prod")["lastAppliedRevision"] == f"main@sha1:{first}"
        assert sync_status(cluster, "prod")["health"] == "Healthy"
        assert sync_status(cluster, "prod")["inventory"] == ["service/gs-api", "service/gs-web"]

        # A new commit is applied at the next interval.
        second = repo.commit("web x3", {"web.yaml": service_yaml(cluster, "gs-web", 3)})
        wait_for(lambda: replicas(cluster, "gs-web") == 3, WAIT, "the second commit")
        cluster.wait_running("gs-web", 3)
        wait_for(
            lambda: (
                sync_status(cluster, "prod").get("lastAppliedRevision") == f"main@sha1:{second}"
            ),
            WAIT,
            "lastAppliedRevision",
        )
        running = {name: ids(cluster, name) for name in ("gs-web", "gs-api")}

        # A broken commit applies nothing (not even its good part) and stalls.
        broken_api = service_yaml(cluster, "gs-api").replace(
            "stopGracePeriod: 2s", "stopGracePeriod: 2x"
        )
        broken = repo.commit(
            "broken", {"api.yaml": broken_api, "web.yaml": service_yaml(cluster, "gs-web", 1)}
        )
        wait_for(
            lambda: (
                sync_status(cluster, "prod").get("lastAttemptedRevision") == f"main@sha1:{broken}"
            ),
            WAIT,
            "the broken commit to be tried",
        )
        stalled = condition(cluster, "prod", "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "ValidationFailed"
        assert (
            "services/api.yaml:10: spec.template.stopGracePeriod: invalid duration '2x'"
            in stalled["message"]
        )
        assert condition(cluster, "prod", "Ready")["status"] == "False"
        assert sync_status(cluster, "prod")["lastAppliedRevision"] == f"main@sha1:{second}"
        assert replicas(cluster, "gs-web") == 3
        assert {name: ids(cluster, name) for name in running} == running
        status = cluster.cli("sync", "status", "prod", check=False)
        assert status.returncode == 1 and "services/api.yaml:10" in status.stdout

        # The next good commit makes it Ready again.
        fixed = repo.commit("fixed", {"api.yaml": service_yaml(cluster, "gs-api")})
        wait_for(
            lambda: sync_status(cluster, "prod").get("lastAppliedRevision") == f"main@sha1:{fixed}",
            WAIT,
            "the fixed commit",
        )
        wait_for(lambda: condition(cluster, "prod", "Ready").get("status") == "True", WAIT, "Ready")
        assert condition(cluster, "prod", "Stalled")["status"] == "False"
        assert replicas(cluster, "gs-web") == 1
        cluster.wait_running("gs-web", 1)

        # Drift by hand is put back at the next interval, with an event naming it.
        cluster.cli("scale", "gs-web=4")
        wait_for(lambda: replicas(cluster, "gs-web") == 1, WAIT, "the drift to be corrected")
        described = cluster.cli("sync", "status", "prod").stdout
        assert "DriftCorrected" in described and "service/gs-web: spec.replicas: 4 → 1" in described

        # Suspended: neither new commits nor drift correction.
        assert cluster.cli("sync", "suspend", "prod").stdout == "sync/prod suspended\n"
        cluster.cli("scale", "gs-web=2")
        repo.commit("api x2", {"api.yaml": service_yaml(cluster, "gs-api", 2)})
        attempted = sync_status(cluster, "prod")["lastAttemptedAt"]
        with pytest.raises(AssertionError):
            wait_for(lambda: replicas(cluster, "gs-web") != 2, 6, "nothing (suspended)")
        assert replicas(cluster, "gs-api") == 1
        assert sync_status(cluster, "prod")["lastAttemptedAt"] == attempted
        cluster.cli("sync", "resume", "prod")
        wait_for(
            lambda: replicas(cluster, "gs-web") == 1 and replicas(cluster, "gs-api") == 2,
            WAIT,
            "resume to apply and correct",
        )

        # Prune: a deleted file's service and its processes go; the other stays as it was.
        cluster.wait_running("gs-web", 1)
        web_ids = ids(cluster, "gs-web")
        pruned = repo.commit("drop api", {"api.yaml": None})
        now = cluster.cli("sync", "now", "prod")
        assert f"applied revision main@sha1:{pruned}" in now.stdout
        assert services(cluster) == {"gs-web"}
        wait_for(lambda: not task_processes("gs-api"), WAIT, "gs-api's processes to exit")
        assert ids(cluster, "gs-web") == web_ids
        assert sync_status(cluster, "prod")["inventory"] == ["service/gs-web"]
        listing = cluster.cli("sync", "ls").stdout
        assert "prod" in listing and "True" in listing


def test_directory_sync_works_the_same_way(cluster: Cluster, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(service_yaml(cluster, "ds-a"))
    (specs / "b.yaml").write_text(service_yaml(cluster, "ds-b"))
    cluster.apply(sync_yaml("local", {"path": str(specs)}, prune=True), "sync.yaml")
    wait_for(lambda: services(cluster) == {"ds-a", "ds-b"}, WAIT, "the directory")
    cluster.wait_running("ds-a", 1)
    wait_for(lambda: condition(cluster, "local", "Ready").get("status") == "True", WAIT, "Ready")
    b_ids = ids(cluster, "ds-b")

    (specs / "a.yaml").write_text(
        service_yaml(cluster, "ds-a").replace("replicas: 1", "replicas: many")
    )
    wait_for(
        lambda: condition(cluster, "local", "Stalled").get("status") == "True", WAIT, "Stalled"
    )
    assert (
        f"{specs / 'a.yaml'}:6: spec.replicas:" in condition(cluster, "local", "Stalled")["message"]
    )
    assert replicas(cluster, "ds-a") == 1

    (specs / "a.yaml").write_text(service_yaml(cluster, "ds-a", 2))
    wait_for(lambda: replicas(cluster, "ds-a") == 2, WAIT, "the fixed file")
    cluster.cli("scale", "ds-a=5")
    wait_for(lambda: replicas(cluster, "ds-a") == 2, WAIT, "the drift to be corrected")

    (specs / "b.yaml").unlink()
    wait_for(lambda: services(cluster) == {"ds-a"}, WAIT, "ds-b to be pruned")
    wait_for(lambda: not task_processes("ds-b"), WAIT, "ds-b's processes to exit")
    assert b_ids  # it did run before
    wait_for(lambda: condition(cluster, "local", "Ready").get("status") == "True", WAIT, "Ready")

    # Deleting the Sync leaves its services running, owned by no set any more.
    a_ids = ids(cluster, "ds-a")
    deleted = cluster.cli("sync", "delete", "local")
    assert deleted.stdout == "sync/local deleted; still running: service/ds-a\n"
    wait_for(
        lambda: cluster.call("GetApplySet", {"name": "sync.local"})["set"] is None,
        WAIT,
        "the Sync's apply set to be dropped",
    )
    assert ids(cluster, "ds-a") == a_ids


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        pytest.param("0s", "spec.interval: interval must be at least 1s", id="zero"),
        pytest.param("soon", "spec.interval: invalid duration 'soon'", id="not-a-duration"),
    ],
)
def test_a_bad_interval_is_refused_with_file_and_line(
    cluster: Cluster, tmp_path: Path, interval: str, problem: str
) -> None:
    path = tmp_path / "sync.yaml"
    text = sync_yaml("bad", {"path": str(tmp_path)}).replace(
        f"interval: {INTERVAL}", f"interval: {interval}"
    )
    path.write_text(text)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "interval:" in t)
    result = cluster.cli("apply", "-f", str(path), check=False)
    assert result.returncode == 1
    assert f"{path}:{line}: {problem}" in result.stderr
    assert "Traceback" not in result.stderr
    assert cluster.call("Get", {"kind": "syncs"})["items"] == []


def test_unreachable_source_and_missing_path_apply_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    unreachable = {"git": {"url": f"git://127.0.0.1:{free_port()}/ops.git"}}
    cluster.apply(sync_yaml("far", unreachable), "far.yaml")
    cluster.apply(sync_yaml("nowhere", {"path": str(tmp_path / "missing")}), "nowhere.yaml")
    wait_for(lambda: condition(cluster, "far", "Ready").get("reason") == "FetchFailed", WAIT, "far")
    wait_for(
        lambda: condition(cluster, "nowhere", "Ready").get("reason") == "FetchFailed",
        WAIT,
        "nowhere",
    )
    far = cluster.cli("sync", "status", "far", check=False)
    assert far.returncode == 1
    assert "git fetch git://127.0.0.1:" in far.stdout and "unable to connect" in far.stdout
    nowhere = cluster.cli("sync", "now", "nowhere", check=False)
    assert nowhere.returncode == 1
    assert f"{tmp_path / 'missing'}: no such directory on this manager" in nowhere.stderr
    assert "Traceback" not in far.stderr + nowhere.stderr
    assert services(cluster) == set()


def test_a_private_repository_is_fetched_with_the_login_of_a_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    password = "pw-" + tmp_path.name[-12:] + "-never-shown"
    repo = Repo(tmp_path)
    first = repo.commit("web", {"web.yaml": service_yaml(cluster, "priv-web")})
    login = tmp_path / "login"
    login.write_text(f"ops:{password}\n")
    with git_http_server(repo.bare.parent, "ops", password) as (url, server):
        cluster.cli("secret", "create", "git-login", "-f", str(login))
        login.unlink()
        source = {"git": {"url": f"{url}/ops.git", "path": "services", "secretRef": "git-login"}}
        cluster.apply(sync_yaml("private", source), "private.yaml")
        cluster.wait_running("priv-web", 1)
        assert server.authenticated > 0
        wait_for(
            lambda: (
                sync_status(cluster, "private").get("lastAppliedRevision") == f"main@sha1:{first}"
            ),
            WAIT,
            "the private commit",
        )
        # The secret cannot go while the Sync logs in with it.
        busy = cluster.cli("secret", "rm", "git-login", check=False)
        assert busy.returncode == 1 and "used by sync/private" in busy.stderr
        outputs = [
            cluster.cli("sync", "ls", "-o", "yaml").stdout,
            cluster.cli("sync", "status", "private").stdout,
            cluster.cli("sync", "status", "private", "-o", "json").stdout,
            busy.stdout + busy.stderr,
        ]
    secret = password.encode()
    assert not any(password in text for text in outputs)
    stored = [p for p in (tmp_path / "manager").rglob("*") if p.is_file()]
    assert stored and not any(secret in p.read_bytes() for p in stored)
    assert secret not in (tmp_path / "manager.log").read_bytes()
