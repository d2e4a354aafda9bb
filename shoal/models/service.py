"""The Service document: ``apiVersion: shoal/v1``, ``kind: Service``.

This is what users write in YAML and what the store keeps under
``/services/<name>``. ``status`` is written by the manager only.
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from shoal.models.base import Model
from shoal.models.container import (
    BUILTIN_RUNTIMES,
    CONTAINER_FIELDS,
    Device,
    HealthCheck,
    Limits,
    Mount,
    PortMapping,
    Ulimit,
    check_capability,
    check_sysctl,
    check_ulimit_name,
)
from shoal.models.job import JobSpec, JobStatus
from shoal.models.resources import ResourceKind, check_distinct_env_names
from shoal.models.rollout import RollbackConfig, UpdateConfig, UpdateStatus
from shoal.models.secret import ConfigReference, SecretReference
from shoal.models.units import Duration, Size

API_VERSION: Final = "shoal/v1"
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONSTRAINT = re.compile(
    r"^\s*(node\.labels\.(?P<label>[A-Za-z0-9._/-]+)|node\.hostname|node\.role|node\.id)"
    r"\s*(?P<op>==|!=)\s*(?P<value>\S.*?)\s*$"
)
SPREAD = re.compile(r"^\s*node\.labels\.(?P<label>[A-Za-z0-9._/-]+)\s*$")
SIGNALS = {
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGKILL",
    "SIGUSR1",
    "SIGUSR2",
    "SIGTERM",
    "SIGSTOP",
    "SIGCONT",
    "SIGWINCH",
}
# Besides the container runtimes, ``process`` enforces ``resources.limits`` (cgroups).
PROCESS_LIMITS = "process"
RUNTIME_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _catalogue(info: ValidationInfo) -> Mapping[str, bool] | None:
    """The runtimes the caller knows, name → whether it takes container fields; None: none given.

    A caller that knows the cluster's runtimes passes them as validation
    context, ``{"runtimes": {name: takes_container_fields}}``: the manager does
    (``shoal.runtimes.registry.runtime_catalogue``), so an unknown runtime is
    refused at apply time. Without it (the CLI, reads from the store) a spec is
    checked for its structure, and the rules that depend on a runtime apply to
    the built-in runtimes, which are known here by name
    (``shoal.models.container.BUILTIN_RUNTIMES``). The models never discover
    plugins themselves: that would mean reading entry points on import, or
    importing the plugins and their engine SDKs.
    """
    context = info.context
    if isinstance(context, Mapping):
        runtimes = context.get("runtimes")
        if isinstance(runtimes, Mapping):
            return runtimes
    return None


def _container_kind(info: ValidationInfo) -> tuple[str | None, bool | None, Mapping[str, bool]]:
    """The template's runtime, whether it takes container fields (None: not known here),
    and the runtimes known."""
    known = _catalogue(info)
    if known is None:
        known = BUILTIN_RUNTIMES
    runtime = info.data.get("runtime")
    return runtime, (known.get(runtime) if runtime is not None else None), known


def _container_runtimes(known: Mapping[str, bool]) -> str:
    return ", ".join(sorted(name for name, container in known.items() if container))


def _check_label_key(key: str) -> str:
    if not LABEL_KEY.match(key):
        raise ValueError(f"invalid label key {key!r}")
    return key


def _check_env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(f"invalid environment variable name {name!r}")
    if name.startswith("SHOAL_"):
        raise ValueError(f"{name!r}: names starting with SHOAL_ are reserved")
    return name


def _check_constraint(expr: str) -> str:
    if not CONSTRAINT.match(expr):
        raise ValueError(
            f"invalid constraint {expr!r}: use 'node.labels.KEY == VALUE', "
            "'node.hostname != NAME', 'node.role == worker' (operators == and !=)"
        )
    return expr


def _check_spread(expr: str) -> str:
    if not SPREAD.match(expr):
        raise ValueError(f"invalid spread descriptor {expr!r}: use 'node.labels.KEY'")
    return expr.strip()


def _check_dns_label(value: str) -> str:
    if not DNS_LABEL.match(value):
        raise ValueError(
            f"invalid name {value!r}: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def _check_endpoints_change(value: str) -> str:
    """``none``, ``restart`` or ``signal:NAME`` (any signal but KILL and STOP), normalised."""
    if value in ("none", "restart"):
        return value
    kind, sep, name = value.partition(":")
    if kind != "signal" or not sep:
        raise ValueError(f"use none, restart or signal:SIGNAL (e.g. signal:SIGHUP), got {value!r}")
    upper = name.strip().upper()
    full = upper if upper.startswith("SIG") else f"SIG{upper}"
    if full not in signal.Signals.__members__:
        raise ValueError(f"unknown signal {name!r} in {value!r}")
    if full in ("SIGKILL", "SIGSTOP"):
        raise ValueError(f"the task cannot handle {full}: use restart")
    return f"signal:{full}"


# Checked per key / per item (not per whole dict or list) so that a validation
# error's location names the offending entry, which lets the manifest loader
# point at its line.
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Constraint = Annotated[str, AfterValidator(_check_constraint)]
SpreadDescriptor = Annotated[str, AfterValidator(_check_spread)]
ServiceName = Annotated[str, AfterValidator(_check_dns_label)]
EndpointsChange = Annotated[str, AfterValidator(_check_endpoints_change)]


class Metadata(Model):
    name: str
    labels: dict[LabelKey, str] = Field(default_factory=dict)
    # Set by the manager; whatever a user writes here is replaced on apply.
    generation: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, value: str) -> str:
        return _check_dns_label(value)


class Reservations(Model):
    cpus: float = Field(default=0.0, ge=0)
    memory: Size = 0
    # Generic resources (``shoal.models.resources``): units of each kind the task
    # needs on its node, e.g. ``{gpu: 1}``; the task is told which units it got.
    generic: dict[ResourceKind, Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=dict, exclude_if=lambda v: not v
    )

    @field_validator("generic")
    @classmethod
    def _distinct_env_names(cls, value: dict[str, int]) -> dict[str, int]:
        check_distinct_env_names(value)
        return value


class Resources(Model):
    reservations: Reservations = Field(default_factory=Reservations)
    # Enforced by the engine for containers and by cgroups for processes.
    limits: Limits | None = None


class SimBehaviour(Model):
    """What a task of the ``sim`` runtime pretends to do (no real work runs)."""

    start_delay: Duration = 0.0
    # None: run until stopped; otherwise exit with ``exit_code`` after this long.
    run_for: Duration | None = None
    exit_code: int = Field(default=0, ge=0, le=255)
    # Refuse to start at all: the task is rejected, as a missing executable would be.
    reject: bool = False


class TaskTemplate(Model):
    runtime: str = "process"
    # Container runtimes: command is the entrypoint and args the cmd; both
    # default to the image's. Other runtimes need a command.
    command: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[EnvName, str] = Field(default_factory=dict)
    workdir: str | None = None
    stop_signal: str = "SIGTERM"
    stop_grace_period: Duration = 10.0
    resources: Resources = Field(default_factory=Resources)
    sim: SimBehaviour | None = None
    healthcheck: HealthCheck | None = None
    # USER[:GROUP], names or numbers. Processes: looked up on the node (default:
    # the agent's --process-user, else the agent's own user); containers: in the image.
    user: str | None = None
    # Files the task gets (shoal.models.secret): secrets in /run/secrets or
    # $SHOAL_SECRETS_DIR, configs at their target or under $SHOAL_CONFIGS_DIR.
    secrets: list[SecretReference] = Field(default_factory=list)
    configs: list[ConfigReference] = Field(default_factory=list)
    # Container runtimes only (shoal.models.container.CONTAINER_FIELDS).
    image: str | None = None
    image_pull_policy: Literal["ifNotPresent", "never", "always"] | None = None
    labels: dict[LabelKey, str] = Field(default_factory=dict)
    # Every runtime: named ports, fixed or picked by the agent (``PortMapping``).
    ports: list[PortMapping] = Field(default_factory=list)
    mounts: list[Mount] = Field(default_factory=list)
    cap_add: list[Annotated[str, AfterValidator(check_capability)]] = Field(default_factory=list)
    cap_drop: list[Annotated[str, AfterValidator(check_capability)]] = Field(default_factory=list)
    sysctls: dict[Annotated[str, AfterValidator(check_sysctl)], str] = Field(default_factory=dict)
    privileged: bool = False
    devices: list[Device] = Field(default_factory=list)
    init: bool = False
    # setrlimit limits of the container's processes, e.g. {nofile: {soft: 1024, hard: 4096}}.
    ulimits: dict[Annotated[str, AfterValidator(check_ulimit_name)], Ulimit] = Field(
        default_factory=dict, exclude_if=lambda v: not v
    )
    # The container's root filesystem is mounted read-only (mounts stay as they are).
    read_only: bool = Field(default=False, exclude_if=lambda v: not v)
    # Services whose endpoints the task is given: SHOAL_ENDPOINTS_<NAME> at its start and
    # $SHOAL_ENDPOINTS_FILE, rewritten on every change (docs/discovery.md). A service
    # not created yet is allowed: it has no endpoints until it is.
    discover: list[ServiceName] = Field(default_factory=list, exclude_if=lambda v: not v)
    # What a change of those endpoints does to the running task besides rewriting the
    # file: none, restart (stopped and replaced at once), signal:SIGNAL.
    on_endpoints_change: EndpointsChange = Field(default="none", exclude_if=lambda v: v == "none")

    @property
    def is_container(self) -> bool:
        """A built-in container runtime (docker, podman). Code that holds the runtime
        should ask it instead (``Runtime.container_fields``): plugins may take them too."""
        return BUILTIN_RUNTIMES.get(self.runtime, False)

    @field_validator(*CONTAINER_FIELDS)
    @classmethod
    def _container_only(cls, value: Any, info: ValidationInfo) -> Any:
        runtime, container, known = _container_kind(info)
        if value and container is False:
            name = to_camel(info.field_name or "")
            raise ValueError(
                f"{name!r} only applies to container runtimes "
                f"({_container_runtimes(known)}), not runtime {runtime!r}"
            )
        if info.field_name == "image" and not value and container:
            raise ValueError(f"runtime {runtime!r} needs an image")
        return value

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, value: list[PortMapping], info: ValidationInfo) -> list[PortMapping]:
        runtime, container, _ = _container_kind(info)
        seen: set[tuple[int, str]] = set()
        names: set[str] = set()
        for index, port in enumerate(value):
            if container and port.target is None:
                raise _located(
                    "value_error",
                    f"runtime {runtime!r} needs the port's target (the port in the container)",
                    (index, "target"),
                    None,
                )
            if port.key in names:
                raise _located(
                    "value_error", f"port name {port.key!r} used twice", (index, "name"), port.key
                )
            names.add(port.key)
            if port.published and (port.published, port.protocol) in seen:
                raise ValueError(f"host port {port.published}/{port.protocol} published twice")
            seen.add((port.published, port.protocol))
        return value

    @model_validator(mode="after")
    def _probe_port_declared(self) -> TaskTemplate:
        check = self.healthcheck
        port = check.port if check is not None else None
        if isinstance(port, str) and port not in {p.key for p in self.ports}:
            names = ", ".join(p.key for p in self.ports) or "none"
            raise _located(
                "value_error",
                f"the probe's port {port!r} is not one of the template's ports ({names})",
                ("healthcheck", check.kind if check else "", "port"),
                port,
            )
        return self

    @field_validator("command")
    @classmethod
    def _command_needed(cls, value: list[str], info: ValidationInfo) -> list[str]:
        runtime, container, _ = _container_kind(info)
        if not value and container is False:
            raise ValueError(f"runtime {runtime!r} needs a command (a list of at least 1 item)")
        return value

    @field_validator("resources")
    @classmethod
    def _limits_where_enforced(cls, value: Resources, info: ValidationInfo) -> Resources:
        runtime, container, known = _container_kind(info)
        if value.limits is not None and runtime != PROCESS_LIMITS and container is False:
            limited = sorted({name for name, takes in known.items() if takes} | {PROCESS_LIMITS})
            raise ValueError(
                "'resources.limits' is enforced for runtimes "
                f"{', '.join(limited)} only, not for runtime {runtime!r} "
                "(use reservations for placement)"
            )
        return value

    @field_validator("user")
    @classmethod
    def _user_group(cls, value: str | None) -> str | None:
        if value is not None:
            user, _, group = value.partition(":")
            if not user or value.count(":") > 1 or (":" in value and not group):
                raise ValueError(f"invalid user {value!r}: use USER or USER:GROUP (names or ids)")
        return value

    @field_validator("secrets", "configs")
    @classmethod
    def _distinct_targets(
        cls, value: list[SecretReference] | list[ConfigReference], info: ValidationInfo
    ) -> list[SecretReference] | list[ConfigReference]:
        seen: set[str] = set()
        for ref in value:
            target = ref.file_name if isinstance(ref, SecretReference) else ref.container_path
            if target in seen:
                raise ValueError(f"two {info.field_name} have the target {target!r}")
            seen.add(target)
        return value

    @field_validator("sim")
    @classmethod
    def _sim_only_for_sim(
        cls, value: SimBehaviour | None, info: ValidationInfo
    ) -> SimBehaviour | None:
        if value is not None and info.data.get("runtime") != "sim":
            raise ValueError("'sim' only applies to runtime: sim")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if isinstance(value, str):
            return shlex.split(value)
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str, info: ValidationInfo) -> str:
        if not RUNTIME_NAME.match(value):
            raise ValueError(
                f"invalid runtime name {value!r}: lower-case letters, digits, '-' and '_', "
                "starting with a letter"
            )
        known = _catalogue(info)
        if known is not None and value not in known:
            raise ValueError(f"unknown runtime {value!r} (known: {', '.join(sorted(known))})")
        return value

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {value!r} (use e.g. SIGTERM, SIGINT, SIGQUIT)")
        return name

    @field_validator("discover")
    @classmethod
    def _distinct_discovered(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for index, name in enumerate(value):
            if name in seen:
                raise _located("duplicate_service", f"{name!r} is listed twice", (index,), name)
            if name == "file":  # its variable would be SHOAL_ENDPOINTS_FILE, the file's path
                raise _located(
                    "reserved_service",
                    "a service named 'file' cannot be discovered: SHOAL_ENDPOINTS_FILE is "
                    "the path of the endpoints file",
                    (index,),
                    name,
                )
            seen.add(name)
        return value

    @field_validator("on_endpoints_change")
    @classmethod
    def _something_discovered(cls, value: str, info: ValidationInfo) -> str:
        if value != "none" and not info.data.get("discover", True):
            raise ValueError("onEndpointsChange applies to the services in discover: list them")
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute_workdir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"workdir must be an absolute path, got {value!r}")
        return value


class RestartPolicy(Model):
    condition: Literal["any", "on-failure", "none"] = "any"
    delay: Duration = 1.0
    max_attempts: int = Field(default=0, ge=0)
    window: Duration = 0.0


class PlacementPreference(Model):
    """Swarm's placement preference: spread tasks evenly over a node label's values."""

    spread: SpreadDescriptor

    @property
    def label(self) -> str:
        """The node label spread over: ``node.labels.zone`` → ``zone``."""
        match = SPREAD.match(self.spread)
        assert match is not None  # validated
        return match.group("label")


class Placement(Model):
    constraints: list[Constraint] = Field(default_factory=list)
    # Applied in order: spread over the first label's values, then within each
    # of those groups over the second's, and so on. Nodes without the label
    # count as one group of their own.
    preferences: list[PlacementPreference] = Field(default_factory=list, exclude_if=lambda v: not v)
    # At most this many live tasks of the service on one node; 0: no limit.
    max_replicas_per_node: int = Field(default=0, ge=0, exclude_if=lambda v: not v)


class Dependency(Model):
    """``spec.dependsOn`` entry: hold this service's tasks until ``service`` meets ``condition``.

    ``started``: the dependency runs its desired tasks; ``healthy``: they also
    pass their health checks (no health check: running counts as healthy);
    ``completed``: the dependency (a job, or a service whose tasks do not
    restart) finished successfully.
    """

    service: ServiceName
    condition: Literal["started", "healthy", "completed"] = "started"


JOB_MODES = ("replicated-job", "global-job")


class ServiceSpec(Model):
    mode: Literal["replicated", "global", "replicated-job", "global-job"] = "replicated"
    replicas: int | None = Field(default=None, ge=0, le=100_000)
    template: TaskTemplate
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    placement: Placement = Field(default_factory=Placement)
    # None: Swarm's defaults (``update_config`` / ``rollback_config``).
    update: UpdateConfig | None = None
    rollback: RollbackConfig | None = None
    # Template revisions kept for ``shoal rollout history|undo``.
    revision_history_limit: int = Field(default=10, ge=1, le=1000)
    # Jobs only (``mode: replicated-job | global-job``).
    job: JobSpec | None = None
    # Services whose condition must hold before this one's tasks are created.
    depends_on: list[Dependency] = Field(default_factory=list, exclude_if=lambda v: not v)

    @field_validator("depends_on")
    @classmethod
    def _distinct_dependencies(cls, value: list[Dependency]) -> list[Dependency]:
        seen: set[str] = set()
        for index, dependency in enumerate(value):
            if dependency.service in seen:
                raise _located(
                    "duplicate_dependency",
                    f"{dependency.service!r} is listed twice",
                    (index, "service"),
                    dependency.service,
                )
            seen.add(dependency.service)
        return value

    @field_validator("replicas")
    @classmethod
    def _replicas_for_mode(cls, value: int | None, info: ValidationInfo) -> int | None:
        # A field validator (mode is declared first, so it is in info.data) rather
        # than a model validator: the error is then located at spec.replicas.
        mode = info.data.get("mode")
        if value is not None and mode == "global":
            raise ValueError("a global service runs one task per node; remove replicas")
        if value is not None and mode in JOB_MODES:
            raise ValueError(f"a {mode} has no replicas: use job.completions")
        return value

    @field_validator("job")
    @classmethod
    def _job_for_jobs(cls, value: JobSpec | None, info: ValidationInfo) -> JobSpec | None:
        mode = info.data.get("mode")
        if value is not None and mode is not None and mode not in JOB_MODES:
            raise ValueError(
                f"'job' only applies to mode replicated-job or global-job, not {mode!r}"
            )
        if value is not None and mode == "global-job" and value.completions != 1:
            raise ValueError("a global-job runs one task per node: completions does not apply")
        return value

    @field_validator("update", "rollback")
    @classmethod
    def _order_and_ports(
        cls, value: UpdateConfig | RollbackConfig | None, info: ValidationInfo
    ) -> UpdateConfig | RollbackConfig | None:
        template = info.data.get("template")
        if value is not None and info.data.get("mode") in JOB_MODES:
            raise ValueError(f"a job runs to completion and has no '{info.field_name}' settings")
        if value is None or not isinstance(template, TaskTemplate):
            return value
        fixed = [p for p in template.ports if p.published]
        if value.order == "start-first" and fixed:
            ports = ", ".join(f"{p.published}/{p.protocol}" for p in fixed)
            raise ValueError(
                f"order start-first would start a new task beside the old one, and both "
                f"publish host port(s) {ports}: use stop-first"
            )
        if isinstance(value, UpdateConfig) and value.canary:
            replicas = info.data.get("replicas")
            if info.data.get("mode") == "global":
                raise ValueError("canary applies to replicated services only")
            count = 1 if replicas is None else replicas
            if value.canary > count:
                raise _located(
                    "value_error",
                    f"canary ({value.canary}) cannot exceed replicas ({count})",
                    ("canary",),
                    value.canary,
                )
        return value

    @property
    def replica_count(self) -> int:
        return 1 if self.replicas is None else self.replicas

    @property
    def is_job(self) -> bool:
        return self.mode in JOB_MODES

    @property
    def job_config(self) -> JobSpec:
        return self.job or JobSpec()

    @property
    def update_config(self) -> UpdateConfig:
        return self.update or UpdateConfig()

    @property
    def rollback_config(self) -> RollbackConfig:
        return self.rollback or RollbackConfig()


class Revision(Model):
    """One template a service ran (or runs), for ``shoal rollout history|undo``."""

    number: int
    template: TaskTemplate
    created_at: datetime
    # Why: ``apply -m``/``--annotation``, else the command and file it came from.
    cause: str = ""


class ServiceStatus(Model):
    """Written by the manager only; whatever ``apply`` sends here is ignored.

    ``update`` and ``revisions`` are kept in the store with the service; the
    counts and ``error`` are computed when the service is read.
    """

    desired_tasks: int = 0
    running_tasks: int = 0
    observed_generation: int | None = None
    error: str | None = None
    # The revision number of ``spec.template``.
    revision: int | None = None
    update: UpdateStatus | None = None
    revisions: list[Revision] = Field(default_factory=list)
    job: JobStatus | None = None


class Service(Model):
    api_version: Literal["shoal/v1"] = API_VERSION
    kind: Literal["Service"] = "Service"
    metadata: Metadata
    spec: ServiceSpec
    status: ServiceStatus | None = None

    @field_validator("spec")
    @classmethod
    def _not_its_own_dependency(cls, value: ServiceSpec, info: ValidationInfo) -> ServiceSpec:
        metadata = info.data.get("metadata")
        name = metadata.name if isinstance(metadata, Metadata) else None
        for index, dependency in enumerate(value.depends_on):
            if dependency.service == name:
                raise _located(
                    "self_dependency",
                    "a service cannot depend on itself",
                    ("dependsOn", index, "service"),
                    name,
                )
        template = value.template
        if template.on_endpoints_change == "restart" and name in template.discover:
            raise _located(
                "self_restart",
                "a service that discovers itself cannot restart on every change of its own "
                "endpoints (each restart changes them again): use none or signal:SIGNAL",
                ("template", "onEndpointsChange"),
                template.on_endpoints_change,
            )
        return value

    @property
    def name(self) -> str:
        return self.metadata.name


def _located(kind: str, message: str, loc: tuple[int | str, ...], value: Any) -> ValidationError:
    """An error at ``loc`` below the field being validated (pydantic prefixes the field),
    so the manifest loader can point at the entry's own line."""
    return ValidationError.from_exception_data(
        "Service",
        [InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)],
    )


def parse_constraint(expr: str) -> tuple[str, str, str]:
    """``"node.labels.zone == a"`` → ``("labels.zone", "==", "a")``."""
    match = CONSTRAINT.match(expr)
    if not match:
        raise ValueError(f"invalid constraint {expr!r}")
    label = match.group("label")
    field = f"labels.{label}" if label else expr.split("==")[0].split("!=")[0].strip()[5:]
    return field, match.group("op"), match.group("value")
