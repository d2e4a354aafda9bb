"""Pydantic models of the Compose keys shoal reads, in Compose's own spelling (snake_case).

They take a Compose file as users write it, list and mapping forms alike:
the short forms (``"8080:80/udp"``, ``"./data:/data:ro"``, ``["K=V"]``,
``depends_on: [db]``) are turned into the long ones by ``before`` validators,
so an error is located at the item the user wrote. Keys that are reported
rather than used (``shoal.compose.keys``) are taken out before these models
see a service, so what is left and unknown is an error with a suggestion, as
in shoal's own specs. Converting to shoal's models is ``shoal.compose.convert``.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from shoal.models.container import HealthCheck
from shoal.models.job import JobSpec
from shoal.models.service import SimBehaviour
from shoal.models.units import Duration

_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ComposeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_bytes(value: Any) -> Any:
    """Compose's byte values: ``512m``, ``1g``, ``2GB``, plain numbers (binary units, as Docker)."""
    if isinstance(value, str):
        match = _BYTES.match(value)
        if match is None:
            raise ValueError(f"invalid byte value {value!r}: use forms like '512m', '1g', '2048'")
        return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    return value


Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(ge=0)]


def _text(value: Any) -> Any:
    """Numbers and booleans where Compose takes strings (``FOO: 1``, ``user: 1000``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_text)]


def _words(value: Any) -> Any:
    """A command as a string (split as a shell would, without running one) or a list."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split {value!r} into words: {exc}") from exc
    return value


Words = Annotated[list[Text], BeforeValidator(_words)]


def _key_values(value: Any) -> Any:
    """``["K=V", "K"]`` → ``{K: V, K: None}``; a mapping is taken as it is."""
    if isinstance(value, list):
        pairs: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected 'KEY=VALUE' strings in the list, got {item!r}")
            key, sep, rest = item.partition("=")
            pairs[key] = rest if sep else None
        return pairs
    return value


def _names_to_mapping(value: Any) -> Any:
    """``[db, cache]`` → ``{db: {}, cache: {}}`` (depends_on, networks)."""
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ValueError("expected a list of service names or a mapping")
        return {item: {} for item in value}
    return value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str | dict) else value


KeyValues = Annotated[dict[str, Text | None], BeforeValidator(_key_values)]
Labels = Annotated[dict[str, Text], BeforeValidator(_key_values)]


# ------------------------------------------------------------------ service


class EnvFile(ComposeModel):
    path: str
    required: bool = True
    format: Literal["raw"] | None = None


def _env_file(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class Port(ComposeModel):
    target: Text
    published: Text | None = None
    protocol: Literal["tcp", "udp"] = "tcp"
    mode: Literal["host", "ingress"] = "ingress"
    host_ip: str | None = None


_SHORT_PORT = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<published>\d+(?:-\d+)?)?:)?"
    r"(?P<target>\d+(?:-\d+)?)(?:/(?P<protocol>[a-z]+))?$"
)


def _short_port(value: Any) -> Any:
    """``[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]``, ranges allowed (``8000-8002:80-82``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return value
    match = _SHORT_PORT.match(value.strip())
    if match is None:
        raise ValueError(
            f"invalid port {value!r}: use [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. '8080:80'"
        )
    port: dict[str, Any] = {"target": match.group("target")}
    if match.group("published"):
        port["published"] = match.group("published")
    if match.group("protocol"):
        port["protocol"] = match.group("protocol")
    if match.group("ip"):
        port["host_ip"] = match.group("ip").strip("[]")
    return port


class Healthcheck(ComposeModel):
    test: list[Text] | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=1)
    start_period: Duration | None = None
    disable: bool = False

    @field_validator("test", mode="before")
    @classmethod
    def _shell_string(cls, value: Any) -> Any:
        # A string is CMD-SHELL, as in Docker.
        return ["CMD-SHELL", value] if isinstance(value, str) else value

    @field_validator("test")
    @classmethod
    def _form(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value or value[0] not in ("CMD", "CMD-SHELL", "NONE"):
                raise ValueError(
                    "test starts with CMD (then the command's words), CMD-SHELL (then a shell "
                    "command) or NONE, or is a string (a shell command)"
                )
            if value[0] != "NONE" and len(value) < 2:
                raise ValueError(f"{value[0]} needs a command after it")
            if value[0] == "CMD-SHELL" and len(value) != 2:
                raise ValueError("CMD-SHELL takes one string: the shell command")
        return value


class FileRef(ComposeModel):
    source: str
    target: str | None = None
    uid: Text | None = None
    gid: Text | None = None
    mode: int | str | None = None


def _file_ref(value: Any) -> Any:
    return {"source": value} if isinstance(value, str) else value


class BindOptions(ComposeModel):
    propagation: str | None = None
    create_host_path: bool | None = None
    selinux: str | None = None


class VolumeOptions(ComposeModel):
    nocopy: bool | None = None
    subpath: str | None = None


class TmpfsOptions(ComposeModel):
    size: Bytes | None = None
    mode: int | None = None


class Volume(ComposeModel):
    type: Literal["bind", "volume", "tmpfs"] = "volume"
    source: str | None = None
    target: str
    read_only: bool = False
    bind: BindOptions | None = None
    volume: VolumeOptions | None = None
    tmpfs: TmpfsOptions | None = None


def _short_volume(value: Any) -> Any:
    """``[SOURCE:]TARGET[:MODE]``: a path source is a bind mount, a name a named volume."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"invalid volume {value!r}: use [SOURCE:]TARGET[:ro|rw]")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    flags = set(mode.split(","))
    unknown = flags - {"ro", "rw", "z", "Z", "cached", "delegated", "consistent", "nocopy"}
    if unknown:
        raise ValueError(f"invalid volume mode {mode!r} in {value!r}: use ro or rw")
    path = source.startswith(("/", ".", "~"))
    return {
        "type": "bind" if path else "volume",
        "source": source,
        "target": target,
        "read_only": "ro" in flags,
    }


class Device(ComposeModel):
    source: str
    target: str | None = None
    permissions: str = "rwm"


def _short_device(value: Any) -> Any:
    if isinstance(value, str):
        parts = value.split(":")
        device: dict[str, str] = {"source": parts[0]}
        if len(parts) > 1:
            device["target"] = parts[1]
        if len(parts) > 2:
            device["permissions"] = parts[2]
        if len(parts) > 3:
            raise ValueError(f"invalid device {value!r}: use HOST[:CONTAINER[:PERMISSIONS]]")
        return device
    return value


class Ulimit(ComposeModel):
    soft: int = Field(ge=-1)
    hard: int = Field(ge=-1)


def _ulimit(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"soft": value, "hard": value}
    return value


class Dependency(ComposeModel):
    condition: Literal["service_started", "service_healthy", "service_completed_successfully"] = (
        "service_started"
    )
    required: bool = True


# ------------------------------------------------------------------- deploy


class Spread(ComposeModel):
    spread: str


class PlacementKeys(ComposeModel):
    constraints: list[str] = Field(default_factory=list)
    preferences: list[Spread] = Field(default_factory=list)
    max_replicas_per_node: int | None = Field(default=None, ge=1)


class DiscreteResource(ComposeModel):
    kind: str
    value: int = Field(ge=1)


class GenericResource(ComposeModel):
    discrete_resource_spec: DiscreteResource


class ResourceLimits(ComposeModel):
    cpus: float | None = Field(default=None, gt=0)
    memory: Bytes | None = None
    pids: int | None = Field(default=None, ge=1)


class ResourceReservations(ComposeModel):
    cpus: float | None = Field(default=None, ge=0)
    memory: Bytes | None = None
    generic_resources: list[GenericResource] = Field(default_factory=list)


class ResourcesKeys(ComposeModel):
    limits: ResourceLimits | None = None
    reservations: ResourceReservations | None = None


class RestartPolicyKeys(ComposeModel):
    condition: Literal["none", "on-failure", "any"] = "any"
    delay: Duration | None = None
    max_attempts: int | None = Field(default=None, ge=0)
    window: Duration | None = None


class UpdateKeys(ComposeModel):
    parallelism: int | None = Field(default=None, ge=0)
    delay: Duration | None = None
    failure_action: Literal["continue", "rollback", "pause"] | None = None
    monitor: Duration | None = None
    max_failure_ratio: float | None = Field(default=None, ge=0, le=1)
    order: Literal["stop-first", "start-first"] | None = None


class Deploy(ComposeModel):
    mode: Literal["replicated", "global", "replicated-job", "global-job"] = "replicated"
    replicas: int | None = Field(default=None, ge=0)
    labels: Labels = Field(default_factory=dict)
    placement: PlacementKeys | None = None
    resources: ResourcesKeys | None = None
    restart_policy: RestartPolicyKeys | None = None
    update_config: UpdateKeys | None = None
    rollback_config: UpdateKeys | None = None


class XShoal(ComposeModel):
    """shoal-only fields of one service (``x-shoal:``), in shoal's spelling (camelCase)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    runtime: str | None = None
    sim: SimBehaviour | None = None
    healthcheck: HealthCheck | None = None
    job: JobSpec | None = None
    revision_history_limit: int | None = Field(
        default=None, ge=1, le=1000, alias="revisionHistoryLimit"
    )
    image_pull_policy: Literal["ifNotPresent", "never", "always"] | None = Field(
        default=None, alias="imagePullPolicy"
    )


_RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


class ComposeService(ComposeModel):
    image: str | None = None
    entrypoint: Words | None = None
    command: Words | None = None
    environment: KeyValues = Field(default_factory=dict)
    env_file: Annotated[
        list[Annotated[EnvFile, BeforeValidator(_env_file)]], BeforeValidator(_listed)
    ] = Field(default_factory=list)
    ports: list[Annotated[Port, BeforeValidator(_short_port)]] = Field(default_factory=list)
    healthcheck: Healthcheck | None = None
    secrets: list[Annotated[FileRef, BeforeValidator(_file_ref)]] = Field(default_factory=list)
    configs: list[Annotated[FileRef, BeforeValidator(_file_ref)]] = Field(default_factory=list)
    volumes: list[Annotated[Volume, BeforeValidator(_short_volume)]] = Field(default_factory=list)
    tmpfs: Annotated[list[str], BeforeValidator(_listed)] = Field(default_factory=list)
    cap_add: list[str] = Field(default_factory=list)
    cap_drop: list[str] = Field(default_factory=list)
    sysctls: Labels = Field(default_factory=dict)
    ulimits: dict[str, Annotated[Ulimit, BeforeValidator(_ulimit)]] = Field(default_factory=dict)
    user: Text | None = None
    working_dir: str | None = None
    stop_signal: str | None = None
    stop_grace_period: Duration | None = None
    labels: Labels = Field(default_factory=dict)
    init: bool | None = None
    read_only: bool = False
    privileged: bool = False
    devices: list[Annotated[Device, BeforeValidator(_short_device)]] = Field(default_factory=list)
    depends_on: Annotated[dict[str, Dependency], BeforeValidator(_names_to_mapping)] = Field(
        default_factory=dict
    )
    deploy: Deploy | None = None
    restart: str | None = None
    scale: int | None = Field(default=None, ge=0)
    pull_policy: Literal["always", "never", "missing", "if_not_present"] | None = None
    cpus: float | None = Field(default=None, gt=0)
    mem_limit: Bytes | None = None
    pids_limit: int | None = Field(default=None, ge=1)
    x_shoal: XShoal | None = Field(default=None, alias="x-shoal")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("restart")
    @classmethod
    def _restart(cls, value: str | None) -> str | None:
        if value is not None and not _RESTART.match(value):
            raise ValueError(
                f"invalid restart {value!r}: use no, always, unless-stopped or on-failure[:N]"
            )
        return value


# ---------------------------------------------------------------- top level


class TopVolume(ComposeModel):
    external: bool = False
    name: str | None = None
    driver: Literal["local"] | None = None
    labels: Labels = Field(default_factory=dict)


class TopSecret(ComposeModel):
    file: str | None = None
    environment: str | None = None
    external: bool = False
    name: str | None = None
    labels: Labels = Field(default_factory=dict)


class TopConfig(TopSecret):
    content: str | None = None


def _empty_is_default(value: Any) -> Any:
    return {} if value is None else value


class ComposeFile(ComposeModel):
    name: str | None = None
    services: dict[str, ComposeService]
    volumes: dict[str, Annotated[TopVolume, BeforeValidator(_empty_is_default)]] = Field(
        default_factory=dict
    )
    secrets: dict[str, TopSecret] = Field(default_factory=dict)
    configs: dict[str, TopConfig] = Field(default_factory=dict)
