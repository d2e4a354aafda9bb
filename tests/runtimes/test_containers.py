"""Container fields on the real engines: each one asked for, then checked from inside.

Every test runs against docker and podman with the locally built busybox image
(``tests/engines.py``); a field that the engine silently dropped would show
here as a wrong value inside the container.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import TaskRejectedError
from shoal.models import TaskTemplate
from shoal.models.task import TaskPort
from shoal.runtimes.base import Runtime, TaskHandle, TaskLaunch
from tests.engines import TEST_IMAGE, client

pytestmark = pytest.mark.parametrize(
    "runtime_name", [pytest.param("docker", id="docker"), pytest.param("podman", id="podman")]
)
LIMIT = 20.0


def launch(runtime_name: str, script: str | None, task_id: str = "t1", **fields: Any) -> TaskLaunch:
    raw: dict[str, Any] = {"runtime": runtime_name, "image": TEST_IMAGE, **fields}
    if script is not None:
        raw["command"] = ["sh", "-c", script]
    return TaskLaunch(
        task_id=task_id,
        service="svc",
        slot=1,
        template=TaskTemplate.model_validate(raw),
        env={"SHOAL_TASK_ID": task_id},
    )


async def output_of(runtime: Runtime, runtime_name: str, script: str, **fields: Any) -> list[str]:
    """Run ``script`` in a container with ``fields``; its output once it exited 0."""
    task_id = f"t{secrets.token_hex(4)}"  # several per test
    handle = await runtime.start(launch(runtime_name, script, task_id=task_id, **fields))
    async with asyncio.timeout(LIMIT):
        status = await runtime.wait(handle)
    lines = [line async for line in runtime.logs(handle)]
    assert status.exit_code == 0, (status, lines)
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(host: str, port: int) -> str:
    async with asyncio.timeout(LIMIT):
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
                body = (await reader.read()).decode()
                writer.close()
                if body:
                    return body
            except OSError:
                pass
            await asyncio.sleep(0.1)


async def test_user_workdir_env_and_labels(runtime: Runtime, runtime_name: str) -> None:
    lines = await output_of(
        runtime,
        runtime_name,
        'id -u; id -g; pwd; echo "$GREETING"',
        user="1234:2345",
        workdir="/made/by/the/engine",
        env={"GREETING": "hi"},
        labels={"team": "storage"},
    )
    assert lines == ["1234", "2345", "/made/by/the/engine", "hi"]
    (container,) = client(runtime_name).containers.list(
        all=True, filters={"label": f"io.shoal.node={runtime.settings.node_name}"}
    )
    labels = container.labels
    assert labels["team"] == "storage"
    assert labels["io.shoal.task-id"].startswith("t")
    assert labels["io.shoal.service"] == "svc"
    assert labels["io.shoal.node"] == runtime.settings.node_name


async def test_command_is_the_entrypoint_and_args_the_cmd(
    runtime: Runtime, runtime_name: str
) -> None:
    handle = await runtime.start(launch(runtime_name, None, command=["echo"], args=["a", "b c"]))
    async with asyncio.timeout(LIMIT):
        await runtime.wait(handle)
    assert [line async for line in runtime.logs(handle)] == ["a b c"]


async def test_published_port_reaches_the_container(runtime: Runtime, runtime_name: str) -> None:
    port = free_port()
    script = (
        "mkdir -p /www && echo served-by-shoal > /www/index.html && exec httpd -f -p 8080 -h /www"
    )
    handle = await runtime.start(
        launch(runtime_name, script, ports=[{"published": port, "target": 8080}])
    )
    assert "served-by-shoal" in await http_get("127.0.0.1", port)
    # probe_host answers the container's own address, where the target port listens.
    assert "served-by-shoal" in await http_get(await runtime.probe_host(handle), 8080)
    await runtime.stop(handle, "SIGKILL", 0)


async def test_a_port_the_agent_chose_is_published(runtime: Runtime, runtime_name: str) -> None:
    # published: 0 in the spec; the agent picked ``port`` (shoal.agent.ports) and says so.
    port = free_port()
    script = "mkdir -p /www && echo chosen > /www/index.html && exec httpd -f -p 8080 -h /www"
    chosen = launch(runtime_name, script, ports=[{"name": "http", "target": 8080}])
    handle = await runtime.start(
        dataclasses.replace(chosen, ports=(TaskPort(name="http", port=port, target=8080),))
    )
    assert "chosen" in await http_get("127.0.0.1", port)
    await runtime.stop(handle, "SIGKILL", 0)


async def test_bind_volume_and_tmpfs_mounts(
    runtime: Runtime, runtime_name: str, tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("from the host\n")
    volume = f"shoal-test-{secrets.token_hex(4)}"
    mounts = [
        {"type": "bind", "source": str(tmp_path), "target": "/host", "readOnly": True},
        {"type": "volume", "source": volume, "target": "/data"},
        {"type": "tmpfs", "target": "/scratch", "size": "8Mi"},
    ]
    script = (
        "cat /host/hello.txt; touch /host/x 2>/dev/null || echo read-only; "
        "echo kept > /data/file; grep ' /scratch ' /proc/mounts | cut -d' ' -f3; "
        "df -k /scratch | tail -1 | awk '{print $2}'"
    )
    try:
        lines = await output_of(runtime, runtime_name, script, mounts=mounts)
        assert lines == ["from the host", "read-only", "tmpfs", "8192"]
        # The named volume outlives the container: a second task sees the file.
        second = launch(runtime_name, "cat /data/file", task_id="t2", mounts=mounts)
        handle = await runtime.start(second)
        async with asyncio.timeout(LIMIT):
            await runtime.wait(handle)
        assert [line async for line in runtime.logs(handle)] == ["kept"]
    finally:
        for container in client(runtime_name).containers.list(
            all=True, filters={"label": f"io.shoal.node={runtime.settings.node_name}"}
        ):
            container.remove(force=True)
        client(runtime_name).volumes.get(volume).remove(force=True)


async def test_cpu_limit_is_set_in_the_cgroup(runtime: Runtime, runtime_name: str) -> None:
    v1, v2 = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"
    script = f"cat {v1} 2>/dev/null || cut -d' ' -f1 {v2}"
    lines = await output_of(runtime, runtime_name, script, resources={"limits": {"cpus": 0.5}})
    assert lines == ["50000"]


async def test_memory_limit_kills_with_oom(runtime: Runtime, runtime_name: str) -> None:
    handle = await runtime.start(
        launch(
            runtime_name,
            "dd if=/dev/zero of=/dev/null bs=64M count=4",
            resources={"limits": {"memory": "16Mi"}},
        )
    )
    async with asyncio.timeout(LIMIT):
        status = await runtime.wait(handle)
    assert (status.exit_code, status.signal) == (137, 9)
    if runtime_name == "podman":
        return  # Podman 4.3 on cgroup v1 does not report OOM kills (see shoal/runtimes/podman.py)
    assert status.oom_killed
    assert "out of memory" in status.message
    assert "16Mi" in status.message


async def test_capabilities_added_and_dropped(runtime: Runtime, runtime_name: str) -> None:
    script = "grep CapEff /proc/self/status | cut -f2"
    default = int((await output_of(runtime, runtime_name, script))[0], 16)
    lines = await output_of(runtime, runtime_name, script, capAdd=["NET_ADMIN"], capDrop=["CHOWN"])
    changed = int(lines[0], 16)
    net_admin, chown = 1 << 12, 1 << 0
    assert not default & net_admin and default & chown
    assert changed & net_admin and not changed & chown


async def test_sysctls_privileged_devices_and_init(runtime: Runtime, runtime_name: str) -> None:
    lines = await output_of(
        runtime,
        runtime_name,
        "cat /proc/sys/net/core/somaxconn; test -c /dev/shoalnull && echo device; cat /proc/1/comm",
        sysctls={"net.core.somaxconn": "1234"},
        devices=["/dev/null:/dev/shoalnull:rw"],
        init=True,
    )
    assert lines[:2] == ["1234", "device"]
    # An init runs as pid 1, not the shell.
    assert lines[2] in ("docker-init", "catatonit", "podman-init")


async def test_ulimits_and_a_read_only_root(runtime: Runtime, runtime_name: str) -> None:
    lines = await output_of(
        runtime,
        runtime_name,
        "ulimit -Sn; ulimit -Hn; ulimit -Su; touch /rootfile 2>/dev/null || echo read-only",
        ulimits={"nofile": {"soft": 1111, "hard": 2222}, "nproc": 333},
        readOnly=True,
    )
    assert lines == ["1111", "2222", "333", "read-only"]


async def test_privileged(runtime: Runtime, runtime_name: str) -> None:
    try:
        privileged = await output_of(
            runtime, runtime_name, "grep CapEff /proc/self/status | cut -f2", privileged=True
        )
    except TaskRejectedError as exc:
        # Docker insists on every capability; a sandboxed host lacking one refuses.
        assert "operation not permitted" in str(exc)
        pytest.skip(f"this host cannot run privileged {runtime_name} containers: {exc}")
    assert int(privileged[0], 16) & (1 << 21)  # CAP_SYS_ADMIN: only privileged has it


@pytest.mark.parametrize("policy", ["never", "ifNotPresent", "always"])
async def test_missing_image_is_rejected_with_the_reason(
    runtime: Runtime, runtime_name: str, policy: str
) -> None:
    template = launch(
        runtime_name, "true", image="shoal-test/not-built-anywhere:1", imagePullPolicy=policy
    )
    with pytest.raises(TaskRejectedError, match="not-built-anywhere") as caught:
        await runtime.start(template)
    expected = "imagePullPolicy is never" if policy == "never" else "cannot be pulled"
    assert expected in str(caught.value)
    assert await runtime.recover() == []


async def test_recover_leaves_foreign_containers_alone(runtime: Runtime, runtime_name: str) -> None:
    sdk = client(runtime_name)
    foreign = [
        sdk.containers.create(TEST_IMAGE, ["sleep", "30"]),
        sdk.containers.create(
            TEST_IMAGE,
            ["sleep", "30"],
            labels={"io.shoal.node": "some-other-node", "io.shoal.task-id": "theirs"},
        ),
    ]
    try:
        for container in foreign:
            container.start()
        mine = await runtime.start(launch(runtime_name, "sleep 30"))
        assert [h.task_id for h in await runtime.recover()] == ["t1"]
        await runtime.stop(mine, "SIGKILL", 0)
        await runtime.remove(mine)
        for container in foreign:
            container.reload()
            assert container.status == "running"
    finally:
        for container in foreign:
            container.remove(force=True)


async def test_exec_runs_inside_the_container(runtime: Runtime, runtime_name: str) -> None:
    script = "echo inside > /marker; echo ready; sleep 30"
    handle: TaskHandle = await runtime.start(launch(runtime_name, script))
    async with asyncio.timeout(LIMIT):
        async for line in runtime.logs(handle, follow=True):
            if line == "ready":
                break
    result = await runtime.exec(handle, ["cat", "/marker"], 5.0)
    assert (result.exit_code, result.output.strip()) == (0, "inside")
    started_at = (await runtime.inspect(handle)).started_at
    assert started_at is not None and started_at.tzinfo is not None  # aware, as the models need
    assert (await runtime.exec(handle, ["sh", "-c", "exit 3"], 5.0)).exit_code == 3
    await runtime.stop(handle, "SIGKILL", 0)
