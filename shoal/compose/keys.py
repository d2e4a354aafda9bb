"""What shoal does with every Compose key: honoured, not applied (yet), ignored or refused.

This table is the one place that decides; ``docs/compose.md`` shows it (a
test keeps the two in step). Keys are paths below the top of a Compose file,
``*`` standing for a name (a service, a volume, a dependency) and ``[]`` for
an item of a list. A key that is not here and that the models
(``shoal.compose.models``) do not know is an error, with a suggestion.

- **honoured**: converted to shoal's spec (the reason names where it goes);
- **not applied**: understood and reported, but shoal cannot act on it yet;
- **ignored**: reported with why, and dropped;
- **refused**: an error with file and line: ignoring it would run something
  other than what the file asks for, in a way a user would not notice.

Extension keys (``x-…``) are dropped without a word, except ``x-shoal`` under
a service, which holds shoal-only fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["honoured", "not applied", "ignored", "refused"]


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reason: str


def _h(reason: str) -> Verdict:
    return Verdict("honoured", reason)


def _n(reason: str) -> Verdict:
    return Verdict("not applied", reason)


def _i(reason: str) -> Verdict:
    return Verdict("ignored", reason)


def _r(reason: str) -> Verdict:
    return Verdict("refused", reason)


NO_DISCOVERY: Final = "until shoal has service discovery"
NETWORK: Final = "tasks use the engine's default network until shoal has service discovery"
ENGINE_DEFAULT: Final = "not in shoal's templates: the engine's default applies"
USE_LIMITS: Final = "use deploy.resources (limits and reservations)"
LESS_CONFINED: Final = (
    "not in shoal's templates, and running without it would confine the task less than "
    "the file asks"
)

S = ("services", "*")
D = (*S, "deploy")

KEYS: Final[dict[tuple[str, ...], Verdict]] = {
    # ---- top level
    ("version",): _i("obsolete: every file is read as the Compose specification"),
    ("name",): _h("the stack's name when none is given on the command line"),
    ("services",): _h("one shoal service each, named STACK-SERVICE"),
    ("volumes",): _h("named volumes: STACK_NAME, or the name itself when external or named"),
    ("secrets",): _h("shoal secrets named STACK_NAME, created by deploy; external ones must exist"),
    ("configs",): _h("shoal configs named STACK_NAME, applied with the services"),
    ("networks",): _n(NO_DISCOVERY),
    ("include",): _r("list the files with -c instead"),
    ("models",): _r("not supported"),
    # ---- services.*
    (*S, "image"): _h("spec.template.image"),
    (*S, "entrypoint"): _h("spec.template.command (the container's entrypoint)"),
    (*S, "command"): _h("spec.template.args (the container's cmd)"),
    (*S, "environment"): _h("spec.template.env (a key without a value comes from your shell)"),
    (*S, "env_file"): _h("spec.template.env, read when deploying; environment wins"),
    (*S, "ports"): _h("spec.template.ports, published in host mode"),
    (*S, "healthcheck"): _h("spec.template.healthcheck (exec probe)"),
    (*S, "secrets"): _h("spec.template.secrets, in /run/secrets/TARGET"),
    (*S, "configs"): _h("spec.template.configs, at /TARGET"),
    (*S, "volumes"): _h("spec.template.mounts (bind, volume, tmpfs)"),
    (*S, "tmpfs"): _h("spec.template.mounts (tmpfs)"),
    (*S, "cap_add"): _h("spec.template.capAdd"),
    (*S, "cap_drop"): _h("spec.template.capDrop"),
    (*S, "sysctls"): _h("spec.template.sysctls"),
    (*S, "ulimits"): _h("spec.template.ulimits"),
    (*S, "user"): _h("spec.template.user"),
    (*S, "working_dir"): _h("spec.template.workdir"),
    (*S, "stop_signal"): _h("spec.template.stopSignal"),
    (*S, "stop_grace_period"): _h("spec.template.stopGracePeriod"),
    (*S, "labels"): _h("spec.template.labels (container labels)"),
    (*S, "init"): _h("spec.template.init"),
    (*S, "privileged"): _h("spec.template.privileged (docker stack deploy drops it)"),
    (*S, "devices"): _h("spec.template.devices (docker stack deploy drops them)"),
    (*S, "depends_on"): _h("spec.dependsOn: dependents wait (docker stack deploy drops it)"),
    (*S, "deploy"): _h("spec: mode, replicas, placement, resources, restart, update, rollback"),
    (*S, "restart"): _h("spec.restartPolicy when deploy.restart_policy is absent"),
    (*S, "scale"): _h("spec.replicas when deploy.replicas is absent"),
    (*S, "pull_policy"): _h("spec.template.imagePullPolicy"),
    (*S, "cpus"): _h("spec.template.resources.limits.cpus"),
    (*S, "mem_limit"): _h("spec.template.resources.limits.memory"),
    (*S, "pids_limit"): _h("spec.template.resources.limits.pids"),
    (*S, "x-shoal"): _h("shoal-only fields: runtime, sim, healthcheck, job, ..."),
    (*S, "networks"): _n(NO_DISCOVERY),
    (*S, "hostname"): _i(ENGINE_DEFAULT + " (the container's id)"),
    (*S, "domainname"): _i(ENGINE_DEFAULT),
    (*S, "extra_hosts"): _i(NETWORK),
    (*S, "dns"): _i(NETWORK),
    (*S, "dns_opt"): _i(NETWORK),
    (*S, "dns_search"): _i(NETWORK),
    (*S, "links"): _i(NETWORK),
    (*S, "external_links"): _i(NETWORK),
    (*S, "expose"): _i("documentation only: containers reach each other's ports anyway"),
    (*S, "mac_address"): _i(NETWORK),
    (*S, "network_mode"): _i(NETWORK),
    (*S, "container_name"): _i("shoal names each task itself: a service has many"),
    (*S, "build"): _i("shoal runs images and builds none: build and load the image first"),
    (*S, "logging"): _i("shoal keeps every task's output itself: shoal logs SERVICE"),
    (*S, "tty"): _i("tasks run without a terminal"),
    (*S, "stdin_open"): _i("tasks run without a terminal"),
    (*S, "attach"): _i("tasks run without a terminal"),
    (*S, "read_only"): _h("spec.template.readOnly"),
    (*S, "security_opt"): _r(LESS_CONFINED + " (seccomp, AppArmor, no-new-privileges)"),
    (*S, "cgroup"): _i(ENGINE_DEFAULT),
    (*S, "cgroup_parent"): _i(ENGINE_DEFAULT),
    (*S, "ipc"): _i(ENGINE_DEFAULT),
    (*S, "pid"): _i(ENGINE_DEFAULT),
    (*S, "uts"): _i(ENGINE_DEFAULT),
    (*S, "userns_mode"): _r(LESS_CONFINED + " (a user namespace)"),
    (*S, "isolation"): _i(ENGINE_DEFAULT),
    (*S, "runtime"): _i(ENGINE_DEFAULT + " (OCI runtime; x-shoal.runtime picks shoal's)"),
    (*S, "platform"): _i(ENGINE_DEFAULT),
    (*S, "oom_kill_disable"): _i(ENGINE_DEFAULT),
    (*S, "oom_score_adj"): _i(ENGINE_DEFAULT),
    (*S, "shm_size"): _i(ENGINE_DEFAULT),
    (*S, "mem_reservation"): _i(USE_LIMITS),
    (*S, "mem_swappiness"): _i(ENGINE_DEFAULT),
    (*S, "cpu_count"): _i(USE_LIMITS),
    (*S, "cpu_percent"): _i(USE_LIMITS),
    (*S, "cpu_period"): _i(USE_LIMITS),
    (*S, "cpu_rt_period"): _i(ENGINE_DEFAULT),
    (*S, "cpu_rt_runtime"): _i(ENGINE_DEFAULT),
    (*S, "blkio_config"): _i(ENGINE_DEFAULT),
    (*S, "device_cgroup_rules"): _i(ENGINE_DEFAULT),
    (*S, "group_add"): _i(ENGINE_DEFAULT),
    (*S, "storage_opt"): _i(ENGINE_DEFAULT),
    (*S, "credential_spec"): _i("Windows containers only"),
    (*S, "annotations"): _i(ENGINE_DEFAULT),
    (*S, "label_file"): _i("not read: write the labels in the file"),
    (*S, "develop"): _i("for docker compose watch"),
    (*S, "post_start"): _i("no lifecycle hooks in shoal's templates"),
    (*S, "pre_stop"): _i("no lifecycle hooks in shoal's templates"),
    (*S, "use_api_socket"): _i("shoal does not hand the engine's socket to tasks"),
    (*S, "extends"): _r("not supported (nor by docker stack deploy): use YAML anchors, <<: *name"),
    (*S, "volumes_from"): _r("tasks share no volumes by container: use a named volume"),
    (*S, "profiles"): _r("a stack deploys every service: remove profiles or those services"),
    (*S, "gpus"): _r("use deploy.resources.reservations.generic_resources"),
    (*S, "cpu_quota"): _r(USE_LIMITS),
    (*S, "cpu_shares"): _r(USE_LIMITS),
    (*S, "cpuset"): _r(USE_LIMITS),
    (*S, "memswap_limit"): _r(USE_LIMITS),
    (*S, "provider"): _r("not supported"),
    (*S, "models"): _r("not supported"),
    # ---- services.*.deploy
    (*D, "mode"): _h("spec.mode (replicated, global, replicated-job, global-job)"),
    (*D, "replicas"): _h("spec.replicas; for a replicated-job spec.job.completions"),
    (*D, "labels"): _h("metadata.labels (service labels)"),
    (*D, "placement", "constraints"): _h("spec.placement.constraints"),
    (*D, "placement", "preferences"): _h("spec.placement.preferences (spread)"),
    (*D, "placement", "max_replicas_per_node"): _h("spec.placement.maxReplicasPerNode"),
    (*D, "resources", "limits"): _h("spec.template.resources.limits (cpus, memory, pids)"),
    (*D, "resources", "reservations", "cpus"): _h("spec.template.resources.reservations.cpus"),
    (*D, "resources", "reservations", "memory"): _h("spec.template.resources.reservations.memory"),
    (*D, "resources", "reservations", "generic_resources"): _h(
        "spec.template.resources.reservations.generic"
    ),
    (*D, "resources", "reservations", "devices"): _r(
        "use generic_resources (named countable resources the agents advertise)"
    ),
    (*D, "restart_policy"): _h("spec.restartPolicy"),
    (*D, "update_config"): _h("spec.update"),
    (*D, "rollback_config"): _h("spec.rollback"),
    (*D, "endpoint_mode"): _i(NO_DISCOVERY),
    # ---- details
    (*S, "healthcheck", "start_interval"): _i("shoal probes every interval from the start"),
    (*S, "depends_on", "*", "restart"): _i("dependents are not restarted with a dependency"),
    (*S, "ports", "[]", "host_ip"): _r(
        "shoal publishes on every address of the node; binding one address is not supported"
    ),
    (*S, "ports", "[]", "app_protocol"): _i("documentation only"),
    (*S, "ports", "[]", "name"): _i("documentation only"),
    (*S, "volumes", "[]", "consistency"): _i("Docker Desktop only"),
    (*S, "volumes", "[]", "bind", "propagation"): _i(ENGINE_DEFAULT),
    (*S, "volumes", "[]", "bind", "create_host_path"): _i("the engine creates a missing host path"),
    (*S, "volumes", "[]", "bind", "selinux"): _i(ENGINE_DEFAULT),
    (*S, "volumes", "[]", "volume", "nocopy"): _i(ENGINE_DEFAULT),
    (*S, "volumes", "[]", "volume", "subpath"): _r("not supported: mount the whole volume"),
    (*S, "volumes", "[]", "tmpfs", "mode"): _i(ENGINE_DEFAULT),
    ("volumes", "*", "driver_opts"): _r(
        "volumes are created by the engine's local driver without options; "
        "create the volume yourself and mark it external"
    ),
    ("volumes", "*", "labels"): _i("volumes are created by the engine on first use"),
    ("secrets", "*", "driver"): _r("secret drivers are not supported"),
    ("secrets", "*", "template_driver"): _r("templated secrets are not supported"),
    ("configs", "*", "template_driver"): _r("templated configs are not supported"),
}

# The keys a service's and its deploy section's models take, for the docs table.
SERVICE_PREFIX: Final = S


_NAMED = ("services", "volumes", "secrets", "configs", "networks")


def shape(path: tuple[str | int, ...]) -> tuple[str, ...]:
    """``(services, web, ports, 0, host_ip)`` → ``(services, *, ports, [], host_ip)``."""
    out: list[str] = []
    for index, part in enumerate(path):
        if isinstance(part, int):
            out.append("[]")
        elif (index == 1 and path[0] in _NAMED) or (
            index == 3 and path[0] == "services" and path[2] == "depends_on"
        ):
            out.append("*")
        else:
            out.append(part)
    return tuple(out)


def verdict(path: tuple[str | int, ...]) -> Verdict | None:
    return KEYS.get(shape(path))
