"""Template fields that only container runtimes understand, and the health check.

``TaskTemplate`` (``shoal.models.service``) holds these. Container-only fields
are refused at apply time for any runtime that does not take them, naming the
field: a process cannot mount a volume, and silently ignoring what a spec asks
for is worse than refusing it. ``ports`` (``PortMapping``) and ``healthcheck``
apply to every runtime; the agent runs the probes (``shoal.agent.health``).
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from shoal.models.base import Model
from shoal.models.units import Duration, Size

# The built-in runtimes by name, and whether each takes the container fields
# below. A runtime declares this itself (``Runtime.container_fields``); this
# copy lets the CLI check specs for the built-in runtimes without importing
# them (and their engine SDKs); a test keeps the two equal. Plugins are known
# to the manager, which validates with the catalogue of what it loaded.
BUILTIN_RUNTIMES: dict[str, bool] = {"process": False, "sim": False, "docker": True, "podman": True}
# The template fields (snake_case) only container runtimes accept.
CONTAINER_FIELDS: tuple[str, ...] = (
    "image",
    "image_pull_policy",
    "labels",
    "mounts",
    "cap_add",
    "cap_drop",
    "sysctls",
    "privileged",
    "devices",
    "init",
    "ulimits",
    "read_only",
)
CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]+$")
SYSCTL = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_\-/]+)+$")
PERMISSIONS = re.compile(r"^[rwm]{1,3}$")


PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class PortMapping(Model):
    """One named port of a task, for every runtime.

    ``published`` is the port on the node: a number is reserved by the scheduler
    (two tasks on one node cannot both publish it); 0 or absent lets the agent pick
    a free one from its ``--port-range`` when the task starts. Containers forward it
    to ``target`` inside the container (required for them); a process listens on
    the published port itself (``SHOAL_PORT_<NAME>``, and ``PORT`` for the first
    port) and its ``target`` is not used. ``name`` defaults to the target number
    (``"8080"``); names are DNS labels, unique per template (SRV ``_<name>._<proto>``).
    """

    name: str | None = None
    published: int = Field(default=0, ge=0, le=65535)
    target: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not PORT_NAME.match(value):
            raise ValueError(
                f"invalid port name {value!r}: use lower-case letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return value

    @model_validator(mode="after")
    def _named(self) -> PortMapping:
        if self.name is None:
            if self.target is None:
                raise ValueError("a port needs a name (or a target, whose number names it)")
            object.__setattr__(self, "name", str(self.target))
        return self

    @property
    def key(self) -> str:
        """The port's name (always set once validated)."""
        return self.name or str(self.target)

    @property
    def env_name(self) -> str:
        """``SHOAL_PORT_<NAME>``: the name upper-cased, ``-`` as ``_``."""
        return "SHOAL_PORT_" + self.key.upper().replace("-", "_")


class Mount(Model):
    """``bind`` (a host path), ``volume`` (a named engine volume) or ``tmpfs`` (memory)."""

    type: Literal["bind", "volume", "tmpfs"]
    source: str | None = None
    target: str
    read_only: bool = False
    # tmpfs only: its size limit.
    size: Size | None = None

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"target must be an absolute path, got {value!r}")
        return value

    @model_validator(mode="after")
    def _source_for_type(self) -> Mount:
        if self.type == "bind" and not (self.source and self.source.startswith("/")):
            raise ValueError("a bind mount needs source: an absolute path on the node")
        if self.type == "volume" and not self.source:
            raise ValueError("a volume mount needs source: the volume's name")
        if self.type == "tmpfs" and self.source:
            raise ValueError("a tmpfs mount has no source")
        if self.size is not None and self.type != "tmpfs":
            raise ValueError("size only applies to tmpfs mounts")
        return self


class Device(Model):
    """A host device made available in the container; ``"/dev/x[:/dev/y[:rwm]]"`` also works."""

    host: str
    container: str | None = None
    permissions: str = "rwm"

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) > 3:
                raise ValueError(f"invalid device {value!r}: use HOST[:CONTAINER[:PERMISSIONS]]")
            raw: dict[str, str] = {"host": parts[0]}
            if len(parts) > 1:
                raw["container"] = parts[1]
            if len(parts) > 2:
                raw["permissions"] = parts[2]
            return raw
        return value

    @model_validator(mode="after")
    def _paths(self) -> Device:
        for path in (self.host, self.container):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"device paths must be absolute, got {path!r}")
        if not PERMISSIONS.match(self.permissions):
            raise ValueError(f"device permissions are letters of 'rwm', got {self.permissions!r}")
        return self

    def as_string(self) -> str:
        return f"{self.host}:{self.container or self.host}:{self.permissions}"


# The resource limits (setrlimit) a container may be given, as Docker names them.
ULIMIT_NAMES = (
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)


class Ulimit(Model):
    """One resource limit of the container's processes (``ulimit``); -1 is unlimited."""

    soft: int = Field(ge=-1)
    hard: int = Field(ge=-1)

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"soft": value, "hard": value}
        return value

    @model_validator(mode="after")
    def _soft_within_hard(self) -> Ulimit:
        if self.hard != -1 and (self.soft == -1 or self.soft > self.hard):
            raise ValueError(f"soft ({self.soft}) is above hard ({self.hard})")
        return self


def check_ulimit_name(name: str) -> str:
    if name not in ULIMIT_NAMES:
        raise ValueError(f"unknown ulimit {name!r} (known: {', '.join(ULIMIT_NAMES)})")
    return name


class Limits(Model):
    """Hard limits: the engine enforces them for containers, cgroups for processes."""

    cpus: float | None = Field(default=None, gt=0)
    memory: Size | None = None
    # The most processes (and threads) the task may have at once.
    pids: int | None = Field(default=None, ge=1)

    @field_validator("memory")
    @classmethod
    def _enough_memory(cls, value: int | None) -> int | None:
        if value is not None and value < 4 * 1024 * 1024:
            raise ValueError("a memory limit below 4Mi leaves no room to start anything")
        return value


def _probe_port(value: Any) -> Any:
    """A port number (1-65535) or the name of one of the template's ports."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} must be greater than or equal to 1 and at most 65535")
        return value
    if isinstance(value, str) and PORT_NAME.match(value):
        return value
    raise ValueError(f"invalid port {value!r}: a number or the name of one of the ports")


# A number, or the name of one of the template's ports (the agent may have picked it).
ProbePort = Annotated[int | str, BeforeValidator(_probe_port)]


class HttpProbe(Model):
    port: ProbePort
    path: str = "/"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"path must start with '/', got {value!r}")
        return value


class TcpProbe(Model):
    port: ProbePort


class HealthCheck(Model):
    """Exactly one probe, run every ``interval`` by the agent.

    The task counts as running once a probe succeeds. After ``startPeriod``,
    ``retries`` failures in a row make it unhealthy: it is stopped and failed,
    and the restart policy applies.
    """

    exec: list[str] | None = None
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    interval: Duration = 10.0
    timeout: Duration = 5.0
    retries: int = Field(default=3, ge=1)
    start_period: Duration = 0.0

    @field_validator("exec", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("exec")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("exec needs a command")
        return value

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0s")
        return value

    @model_validator(mode="after")
    def _one_probe(self) -> HealthCheck:
        count = sum(p is not None for p in (self.exec, self.http, self.tcp))
        if count != 1:
            raise ValueError("a healthcheck has exactly one of exec, http, tcp")
        return self

    @property
    def kind(self) -> str:
        return "exec" if self.exec else "http" if self.http else "tcp"

    @property
    def port(self) -> int | str | None:
        """The port an ``http`` or ``tcp`` probe connects to (a number or a port's name)."""
        return self.http.port if self.http else self.tcp.port if self.tcp else None


def check_capability(value: str) -> str:
    name = value.upper()
    if not CAPABILITY.match(name):
        raise ValueError(f"invalid capability {value!r} (e.g. NET_ADMIN, SYS_TIME, ALL)")
    return name.removeprefix("CAP_")


def check_sysctl(key: str) -> str:
    if not SYSCTL.match(key):
        raise ValueError(f"invalid sysctl name {key!r} (e.g. net.core.somaxconn)")
    return key
