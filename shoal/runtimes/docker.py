"""The ``docker`` runtime: containers on a Docker engine, through the docker SDK 7.x.

Everything but the SDK calls lives in ``shoal.runtimes.containers``. Options
(``--runtime-opt docker.KEY=VALUE``): ``host`` (default ``$DOCKER_HOST``, else
``unix:///var/run/docker.sock``), ``api-version`` (default ``1.41``, so the client
never has to ask the engine at construction), ``threads`` (pool size, 16).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import docker.types

from shoal.errors import RuntimeBackendError, RuntimeUnavailableError, TaskRejectedError
from shoal.runtimes.base import ExecResult
from shoal.runtimes.containers import (
    WAKE_ACTIONS,
    ContainerConfig,
    ContainerRuntime,
    ContainerState,
    Engine,
    engine_errors,
    start_rejection,
    state_from_attrs,
)

DEFAULT_HOST = "unix:///var/run/docker.sock"


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()


def _mapped(engine: DockerEngine, what: str) -> contextlib.AbstractContextManager[None]:
    """Docker SDK and connection errors → shoal's errors."""
    return engine_errors(
        engine.description, what, docker.errors.APIError, docker.errors.DockerException, _explain
    )


class DockerEngine(Engine):
    def __init__(self, host: str, api_version: str, pool_size: int) -> None:
        self.description = f"the Docker engine at {host}"
        self.client = docker.DockerClient(
            base_url=host, version=api_version, timeout=60, max_pool_size=pool_size
        )
        self.api = self.client.api

    def ping(self) -> str:
        with _mapped(self, "docker version"):
            return str(self.api.version().get("Version", "?"))

    def image_present(self, image: str) -> bool:
        with _mapped(self, f"inspect image {image}"):
            try:
                self.api.inspect_image(image)
            except docker.errors.NotFound:
                return False
            return True

    def pull(self, image: str) -> None:
        repository, tag = _split_reference(image)
        try:
            with _mapped(self, f"pull {image}"):
                self.api.pull(repository, tag=tag)
        except RuntimeUnavailableError:
            raise
        except RuntimeBackendError as exc:
            raise TaskRejectedError(
                f"image {image!r} is not present on this node and cannot be pulled: {exc}"
            ) from exc

    def create(self, config: ContainerConfig) -> str:
        host_config = self.api.create_host_config(
            port_bindings={f"{p.target}/{p.protocol}": p.published for p in config.ports} or None,
            mounts=[_mount(m) for m in config.mounts] or None,
            nano_cpus=config.nano_cpus,
            mem_limit=config.memory,
            # No swap beyond the memory limit: the limit is what the task gets.
            memswap_limit=config.memory,
            pids_limit=config.pids,
            cap_add=config.cap_add or None,
            cap_drop=config.cap_drop or None,
            sysctls=config.sysctls or None,
            privileged=config.privileged,
            devices=[d.as_string() for d in config.devices] or None,
            init=config.init or None,
            ulimits=[
                docker.types.Ulimit(name=name, soft=soft, hard=hard)
                for name, (soft, hard) in sorted(config.ulimits.items())
            ]
            or None,
            read_only=config.read_only or None,
            dns=config.dns or None,
            dns_search=config.dns_search or None,
            log_config=docker.types.LogConfig(
                type="json-file",
                config={"max-size": str(config.log_max_bytes), "max-file": str(config.log_files)},
            ),
        )
        try:
            with _mapped(self, f"create container {config.name}"):
                reply = self.api.create_container(
                    config.image,
                    command=config.cmd,
                    entrypoint=config.entrypoint,
                    environment=config.env,
                    working_dir=config.workdir,
                    user=config.user,
                    labels=config.labels,
                    name=config.name,
                    ports=[(p.target, p.protocol) for p in config.ports] or None,
                    stop_signal=config.stop_signal,
                    host_config=host_config,
                )
        except RuntimeBackendError as exc:
            cause = exc.__cause__
            status = getattr(cause, "status_code", None)
            if isinstance(cause, docker.errors.APIError) and status in (400, 404):
                raise TaskRejectedError(str(exc)) from cause
            raise
        return str(reply["Id"])

    def start(self, container_id: str) -> None:
        try:
            with _mapped(self, "start container"):
                self.api.start(container_id)
        except RuntimeUnavailableError:
            raise
        except RuntimeBackendError as exc:
            if start_rejection(str(exc)):
                raise TaskRejectedError(str(exc)) from exc.__cause__
            raise

    def inspect(self, container_id: str) -> ContainerState | None:
        with _mapped(self, f"inspect container {container_id[:12]}"):
            try:
                return state_from_attrs(self.api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None

    def kill(self, container_id: str, signal: str) -> None:
        with _mapped(self, f"signal container {container_id[:12]}"):
            try:
                self.api.kill(container_id, signal=signal)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # not running
                    return
                raise

    def remove(self, container_id: str) -> None:
        with _mapped(self, f"remove container {container_id[:12]}"):
            try:
                self.api.remove_container(container_id, v=True, force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and "already in progress" in _explain(exc):
                    return
                raise

    def list_ids(self, labels: dict[str, str]) -> list[str]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with _mapped(self, "list containers"):
            return [str(c["Id"]) for c in self.api.containers(all=True, filters=filters)]

    def logs(
        self, container_id: str, follow: bool, tail: int | None, since: int | None = None
    ) -> Iterator[bytes]:
        with _mapped(self, f"logs of container {container_id[:12]}"):
            try:
                output: Any = self.api.logs(
                    container_id,
                    stdout=True,
                    stderr=True,
                    stream=follow,
                    follow=follow,
                    timestamps=True,
                    tail="all" if tail is None else max(tail, 0),
                    since=since,
                )
            except docker.errors.NotFound:
                return
            if isinstance(output, bytes):
                yield output
                return
            yield from output

    def exec(self, container_id: str, command: list[str]) -> ExecResult:
        with _mapped(self, f"exec in container {container_id[:12]}"):
            exec_id = self.api.exec_create(container_id, command, stdout=True, stderr=True)["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
        return ExecResult(int(code) if code is not None else -1, text)

    def exec_stream(
        self, container_id: str, command: list[str]
    ) -> Iterator[tuple[str, bytes] | int]:
        with _mapped(self, f"exec in container {container_id[:12]}"):
            exec_id = self.api.exec_create(container_id, command, stdout=True, stderr=True)["Id"]
            for out, err in self.api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    yield ("stdout", out)
                if err:
                    yield ("stderr", err)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        yield int(code) if code is not None else -1

    def events(self, labels: dict[str, str]) -> Iterator[str]:
        filters = {"type": "container", "label": [f"{k}={v}" for k, v in labels.items()]}
        with _mapped(self, "follow events"):
            for event in self.client.events(decode=True, filters=filters):
                container_id = (event.get("Actor") or {}).get("ID") or event.get("id")
                action = str(event.get("Action") or event.get("status") or "")
                if container_id and action in WAKE_ACTIONS:
                    yield str(container_id)

    def gateway(self) -> str | None:
        found = [str(c["Gateway"]) for c in self._bridge_config() if c.get("Gateway")]
        return found[0] if found else None

    def subnets(self) -> list[str]:
        return [str(c["Subnet"]) for c in self._bridge_config() if c.get("Subnet")]

    def _bridge_config(self) -> list[dict[str, Any]]:
        """The IPAM configs of the default bridge network (none: no such network)."""
        with _mapped(self, "inspect network bridge"):
            try:
                network = self.api.inspect_network("bridge")
            except docker.errors.NotFound:
                return []
        return list((network.get("IPAM") or {}).get("Config") or [])

    def close(self) -> None:
        self.client.close()


def _split_reference(image: str) -> tuple[str, str | None]:
    """``"repo:tag"`` → ``("repo", "tag")``; a digest or no tag → ``(image, None)``."""
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


def _mount(mount: Any) -> docker.types.Mount:
    if mount.type == "tmpfs":
        return docker.types.Mount(
            target=mount.target, source=None, type="tmpfs", tmpfs_size=mount.size
        )
    return docker.types.Mount(
        target=mount.target, source=mount.source, type=mount.type, read_only=mount.read_only
    )


class DockerRuntime(ContainerRuntime):
    """Runs tasks as containers on a Docker engine."""

    name = "docker"
    engine_name = "Docker"

    def make_engine(self, threads: int) -> Engine:
        host = self.settings.options.get("host") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        version = self.settings.options.get("api-version", "1.41")
        return DockerEngine(host, version, threads)
