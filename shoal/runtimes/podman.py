"""The ``podman`` runtime: containers through the Podman API socket (podman SDK 5.x).

Everything but the API calls lives in ``shoal.runtimes.containers``. The SDK's
``containers.create`` drops or refuses several fields shoal supports (CPU
limits, tmpfs, device mappings), so containers are created from a libpod
``SpecGenerator`` document built here and posted through the SDK's API client;
the other calls use the libpod endpoints the same way.

Options (``--runtime-opt podman.KEY=VALUE``): ``socket`` (default
``$CONTAINER_HOST``, else ``unix:///run/podman/podman.sock``; start the service
with ``podman system service --time=0 unix:///run/podman/podman.sock``),
``threads`` (pool size, 16).

Podman 4.3 on cgroup v1 does not report OOM kills (``OOMKilled`` stays false;
its conmon writes the OOM marker into its own working directory, where Podman
does not look): such a task shows as killed by SIGKILL (137) without the OOM
note. ``deploy/engines.sh`` starts the service in a directory of its own so
those markers do not land elsewhere.

Podman 4.3 mangles partial lines when it tails a log itself, so a plain
``logs(tail=N)`` reads the whole log and cuts it here; ``follow`` with ``tail``
still leaves the tail to Podman.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as signals
import time
from collections.abc import Iterator
from typing import Any

import podman
import podman.api
import podman.errors

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

DEFAULT_SOCKET = "unix:///run/podman/podman.sock"
# An inspect that races the container's exit (see PodmanEngine.inspect) is asked again.
_INSPECT_ATTEMPTS = 5
_INSPECT_RETRY = 0.05


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    cause = str(exc.args[0]) if exc.args else ""
    if explanation and cause and cause not in explanation:
        return f"{explanation}: {cause}"
    return str(explanation or cause or exc).strip()


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def _mapped(engine: PodmanEngine, what: str) -> contextlib.AbstractContextManager[None]:
    """Podman SDK and connection errors → shoal's errors."""
    return engine_errors(
        engine.description, what, podman.errors.APIError, podman.errors.PodmanError, _explain
    )


class PodmanEngine(Engine):
    def __init__(self, socket: str, pool_size: int) -> None:
        self.description = f"the Podman API at {socket}"
        self.client = podman.PodmanClient(base_url=socket, max_pool_size=pool_size, timeout=60)
        self.api = self.client.api

    def ping(self) -> str:
        with _mapped(self, "podman version"):
            response = self.api.get("/version")
            response.raise_for_status()
            return str(response.json().get("Version", "?"))

    def image_present(self, image: str) -> bool:
        with _mapped(self, f"inspect image {image}"):
            response = self.api.get(f"/images/{image}/exists")
            if response.status_code == 404:
                return False
            response.raise_for_status()
            return True

    def pull(self, image: str) -> None:
        try:
            with _mapped(self, f"pull {image}"):
                response = self.api.post(
                    "/images/pull", params={"reference": image, "quiet": "true"}, stream=False
                )
                response.raise_for_status()
                errors = [
                    json.loads(line).get("error")
                    for line in response.text.splitlines()
                    if line.strip().startswith("{")
                ]
                problems = [e for e in errors if e]
                if problems:
                    raise RuntimeBackendError(f"pull {image}: {problems[-1]}")
        except RuntimeUnavailableError:
            raise
        except RuntimeBackendError as exc:
            raise TaskRejectedError(
                f"image {image!r} is not present on this node and cannot be pulled: {exc}"
            ) from exc

    def create(self, config: ContainerConfig) -> str:
        spec = _spec_generator(config)
        try:
            with _mapped(self, f"create container {config.name}"):
                response = self.api.post(
                    "/containers/create",
                    data=json.dumps(spec),
                    headers={"content-type": "application/json"},
                )
                response.raise_for_status()
        except RuntimeBackendError as exc:
            status = _status(exc.__cause__) if exc.__cause__ else None
            if status in (400, 404) or (status == 500 and start_rejection(str(exc))):
                raise TaskRejectedError(str(exc)) from exc.__cause__
            raise
        return str(response.json()["Id"])

    def start(self, container_id: str) -> None:
        try:
            with _mapped(self, "start container"):
                self.api.post(f"/containers/{container_id}/start").raise_for_status()
        except RuntimeUnavailableError:
            raise
        except RuntimeBackendError as exc:
            if start_rejection(str(exc)):
                raise TaskRejectedError(str(exc)) from exc.__cause__
            raise

    def inspect(self, container_id: str) -> ContainerState | None:
        with _mapped(self, f"inspect container {container_id[:12]}"):
            for attempt in range(_INSPECT_ATTEMPTS):
                response = self.api.get(f"/containers/{container_id}/json")
                if response.status_code == 404:
                    return None
                # Podman 4 answers 500 "read /proc/PID/cgroup: no such process" when
                # the container's process exits during the inspect: ask again.
                racing = response.status_code == 500 and "no such process" in response.text
                if not racing or attempt == _INSPECT_ATTEMPTS - 1:
                    break
                time.sleep(_INSPECT_RETRY)
            response.raise_for_status()
            return state_from_attrs(response.json())

    def kill(self, container_id: str, signal: str) -> None:
        with _mapped(self, f"signal container {container_id[:12]}"):
            response = self.api.post(f"/containers/{container_id}/kill", params={"signal": signal})
            if response.status_code in (404, 409):  # gone, or not running
                return
            response.raise_for_status()

    def remove(self, container_id: str) -> None:
        with _mapped(self, f"remove container {container_id[:12]}"):
            response = self.api.delete(
                f"/containers/{container_id}", params={"force": "true", "v": "true"}
            )
            if response.status_code == 404:
                return
            response.raise_for_status()

    def list_ids(self, labels: dict[str, str]) -> list[str]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        with _mapped(self, "list containers"):
            response = self.api.get("/containers/json", params={"all": "true", "filters": filters})
            response.raise_for_status()
            return [str(c["Id"]) for c in response.json() or []]

    def logs(
        self, container_id: str, follow: bool, tail: int | None, since: int | None = None
    ) -> Iterator[bytes]:
        if tail is not None and not follow:
            # Podman 4.3 joins partial lines when it tails (``printf 'a\\nb'`` tails as
            # "ab"): take everything and cut here.
            output = b"".join(self.logs(container_id, False, None))
            lines = output.splitlines(keepends=True)
            yield b"".join(lines[len(lines) - tail :] if tail > 0 else [])
            return
        params: dict[str, Any] = {
            "stdout": "true",
            "stderr": "true",
            "follow": str(follow).lower(),
            "timestamps": "true",
        }
        # ``since`` is not passed on: Podman 4.3 answered nothing for a Unix time in
        # seconds; the runtime applies it to the stamps instead.
        if tail is not None:
            params["tail"] = max(tail, 0)
        with _mapped(self, f"logs of container {container_id[:12]}"):
            response = self.api.get(
                f"/containers/{container_id}/logs", params=params, stream=follow
            )
            if response.status_code == 404:
                return
            response.raise_for_status()
            frames = podman.api.stream_frames(response) if follow else podman.api.frames(response)
            for frame in frames:
                yield frame if isinstance(frame, bytes) else b"".join(frame)

    def exec(self, container_id: str, command: list[str]) -> ExecResult:
        with _mapped(self, f"exec in container {container_id[:12]}"):
            container = self.client.containers.get(container_id)
            code, output = container.exec_run(command, stdout=True, stderr=True)
        raw = output if isinstance(output, bytes) else str(output).encode()
        return ExecResult(
            int(code) if code is not None else -1, _demux(raw).decode(errors="replace")
        )

    def exec_stream(
        self, container_id: str, command: list[str]
    ) -> Iterator[tuple[str, bytes] | int]:
        # The SDK's exec_run(stream=True) hides the exec id, so the exit code: libpod directly.
        with _mapped(self, f"exec in container {container_id[:12]}"):
            body = {"Cmd": command, "AttachStdout": True, "AttachStderr": True, "Tty": False}
            response = self.api.post(f"/containers/{container_id}/exec", data=json.dumps(body))
            response.raise_for_status()
            exec_id = response.json()["Id"]
            started = self.api.post(
                f"/exec/{exec_id}/start",
                data=json.dumps({"Detach": False, "Tty": False}),
                stream=True,
            )
            started.raise_for_status()
            for frame in podman.api.stream_frames(started, demux=True):
                out, err = frame if isinstance(frame, tuple) else (frame, None)
                if out:
                    yield ("stdout", bytes(out))
                if err:
                    yield ("stderr", bytes(err))
            inspected = self.api.get(f"/exec/{exec_id}/json")
            inspected.raise_for_status()
            code = inspected.json().get("ExitCode")
        yield int(code) if code is not None else -1

    def events(self, labels: dict[str, str]) -> Iterator[str]:
        filters = json.dumps(
            {"type": ["container"], "label": [f"{k}={v}" for k, v in labels.items()]}
        )
        with _mapped(self, "follow events"):
            response = self.api.get(
                "/events", params={"stream": "true", "filters": filters}, stream=True
            )
            response.raise_for_status()
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                container_id = (event.get("Actor") or {}).get("ID") or event.get("ID")
                action = str(event.get("Action") or event.get("status") or "")
                if container_id and action in WAKE_ACTIONS:
                    yield str(container_id)

    def gateway(self) -> str | None:
        found = [str(s["gateway"]) for s in self._network_subnets() if s.get("gateway")]
        return found[0] if found else None

    def subnets(self) -> list[str]:
        return [str(s["subnet"]) for s in self._network_subnets() if s.get("subnet")]

    def _network_subnets(self) -> list[dict[str, Any]]:
        """The subnets of the network ``podman`` (none: no such network)."""
        with _mapped(self, "inspect network podman"):
            response = self.api.get("/networks/podman/json")
            if response.status_code == 404:
                return []
            response.raise_for_status()
            return list(response.json().get("subnets") or [])

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]


def _demux(raw: bytes) -> bytes:
    """The payload of a multiplexed stream (8-byte frame headers), or ``raw`` if it is not one."""
    payload = bytearray()
    pos = 0
    while pos + 8 <= len(raw):
        stream, size = raw[pos], int.from_bytes(raw[pos + 4 : pos + 8], "big")
        if stream not in (0, 1, 2) or raw[pos + 1 : pos + 4] != b"\0\0\0":
            return raw
        payload += raw[pos + 8 : pos + 8 + size]
        pos += 8 + size
    return bytes(payload) if pos == len(raw) else raw


def _rlimit(value: int) -> int:
    """libpod takes unsigned limits: -1 (unlimited) is RLIM_INFINITY."""
    return 2**64 - 1 if value == -1 else value


def _spec_generator(config: ContainerConfig) -> dict[str, Any]:
    """The libpod ``SpecGenerator`` for ``config``."""
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for mount in config.mounts:
        if mount.type == "bind":
            options = ["rbind", "ro" if mount.read_only else "rw"]
            mounts.append(
                {
                    "type": "bind",
                    "source": mount.source,
                    "destination": mount.target,
                    "options": options,
                }
            )
        elif mount.type == "tmpfs":
            options = [f"size={mount.size}"] if mount.size else []
            mounts.append(
                {
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "destination": mount.target,
                    "options": options,
                }
            )
        else:
            volumes.append(
                {
                    "Name": mount.source,
                    "Dest": mount.target,
                    "Options": ["ro"] if mount.read_only else [],
                }
            )
    limits: dict[str, Any] = {}
    if config.nano_cpus:
        limits["cpu"] = {"quota": config.nano_cpus // 10_000, "period": 100_000}
    if config.memory:
        limits["memory"] = {"limit": config.memory, "swap": config.memory}
    if config.pids:
        limits["pids"] = {"limit": config.pids}
    spec: dict[str, Any] = {
        "name": config.name,
        "image": config.image,
        "entrypoint": config.entrypoint,
        "command": config.cmd,
        "env": config.env,
        "work_dir": config.workdir,
        "create_working_dir": config.workdir is not None,
        "user": config.user,
        "labels": config.labels,
        "portmappings": [
            {"container_port": p.target, "host_port": p.published, "protocol": p.protocol}
            for p in config.ports
        ],
        "mounts": mounts,
        "volumes": volumes,
        "resource_limits": limits or None,
        "cap_add": config.cap_add,
        "cap_drop": config.cap_drop,
        "sysctl": config.sysctls,
        "privileged": config.privileged,
        "devices": [{"path": d.as_string()} for d in config.devices],
        "init": config.init,
        "r_limits": [
            {"type": name, "soft": _rlimit(soft), "hard": _rlimit(hard)}
            for name, (soft, hard) in sorted(config.ulimits.items())
        ]
        or None,
        "read_only_filesystem": config.read_only or None,
        "dns_server": config.dns or None,
        "dns_search": config.dns_search or None,
        "stop_signal": int(signals.Signals[config.stop_signal]),
        "log_configuration": {"driver": "k8s-file", "size": config.log_max_bytes},
    }
    return {key: value for key, value in spec.items() if value is not None}


class PodmanRuntime(ContainerRuntime):
    """Runs tasks as containers through the Podman API."""

    name = "podman"
    engine_name = "Podman"

    def make_engine(self, threads: int) -> Engine:
        socket = (
            self.settings.options.get("socket")
            or os.environ.get("CONTAINER_HOST")
            or DEFAULT_SOCKET
        )
        return PodmanEngine(socket, threads)
