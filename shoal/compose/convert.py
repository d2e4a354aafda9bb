"""From validated Compose models to shoal's documents, every field traced back to its key.

Conversion follows ``docker stack deploy`` (docker/cli ``cli/compose/convert``)
where shoal can do what it does: ``entrypoint`` becomes the template's
``command`` and ``command`` its ``args``; environment from ``env_file`` first,
then ``environment``; secrets and configs land at ``/run/secrets/NAME`` and
``/NAME`` unless given a target; a healthcheck without ``interval`` or
``timeout`` gets Docker's 30 s. What Swarm drops and shoal can do is kept:
``privileged``, ``devices``.

The wire documents are validated by shoal's own models (``Service``), so a
value shoal refuses (an unknown capability, a constraint it cannot evaluate, a
command a process runtime lacks) is refused with the message shoal gives for
its own specs. Each field written records the Compose path it came from
(``origins``), so such an error is reported at the file and line of that key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shoal.compose import keys
from shoal.compose.interpolate import parse_env_file
from shoal.compose.models import (
    ComposeFile,
    ComposeService,
    Deploy,
    FileRef,
    TopConfig,
    TopSecret,
    UpdateKeys,
    XShoal,
    parse_bytes,
)
from shoal.models.container import BUILTIN_RUNTIMES
from shoal.models.secret import ConfigDocument, check_name
from shoal.models.service import API_VERSION, DNS_LABEL, Service
from shoal.units import format_duration

Where = tuple[str | int, ...]
Report = Callable[[Where, str], None]
STACK_LABEL = "shoal.stack"

# Docker's healthcheck defaults (a Compose user expects them, not shoal's).
HEALTH_INTERVAL = 30.0
HEALTH_TIMEOUT = 30.0
HEALTH_RETRIES = 3
# Swarm: an update or rollback monitor of 0 means the default, 5 s.
DEFAULT_MONITOR = 5.0
_CONDITIONS = {
    "service_started": "started",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass
class SecretFile:
    """A secret deploy creates (``shoal secret create``) before applying the services."""

    name: str
    data: bytes = field(repr=False)
    origin: str  # "file ./db_password.txt" or "environment DB_PASSWORD"


@dataclass
class Converted:
    services: list[Service] = field(default_factory=list)
    configs: list[ConfigDocument] = field(default_factory=list)
    secrets: list[SecretFile] = field(default_factory=list)
    external_secrets: list[str] = field(default_factory=list)
    external_configs: list[str] = field(default_factory=list)
    # shoal service name → its name in the Compose file
    compose_names: dict[str, str] = field(default_factory=dict)


@dataclass
class Converter:
    """Converts one merged, validated Compose file for stack ``stack``."""

    stack: str
    compose: ComposeFile
    project_dir: Path
    environ: Mapping[str, str]
    variables: Mapping[str, str]
    interpolate: Callable[[str], str]
    problem: Report
    note: Callable[[Where, str, str], None]
    service_error: Callable[[Mapping[tuple[str | int, ...], Where], ValidationError], None]
    out: Converted = field(default_factory=Converted)

    def run(self) -> Converted:
        secret_names = self._secrets()
        config_names = self._configs()
        for name, service in self.compose.services.items():
            self._service(name, service, secret_names, config_names)
        return self.out

    # ------------------------------------------------------------ top level

    def _path(self, text: str) -> Path:
        path = Path(os.path.expanduser(text))
        return path if path.is_absolute() else self.project_dir / path

    def _declared(
        self, kind: str, tops: Mapping[str, TopSecret], external: list[str]
    ) -> tuple[dict[str, str], list[tuple[str, Where, TopSecret, bytes]]]:
        """The names of the stack's top-level ``kind``s (secrets or configs), by key,
        and the ones it creates: name, where declared, declaration, bytes.

        External ones go to ``external``; bad names and contents are problems.
        """
        names: dict[str, str] = {}
        created = []
        for key, top in tops.items():
            where: Where = (f"{kind}s", key)
            name = top.name or (key if top.external else f"{self.stack}_{key}")
            names[key] = name
            if not self._valid_name(where, name, kind):
                continue
            if top.external:
                external.append(name)
                continue
            content = top.content if isinstance(top, TopConfig) else None
            data = self._content(where, top.file, top.environment, content, kind)
            if data is not None:
                created.append((name, where, top, data))
        return names, created

    def _secrets(self) -> dict[str, str]:
        names, created = self._declared("secret", self.compose.secrets, self.out.external_secrets)
        for name, _, top, data in created:
            origin = f"file {top.file}" if top.file else f"environment {top.environment}"
            self.out.secrets.append(SecretFile(name, data, origin))
        return names

    def _configs(self) -> dict[str, str]:
        names, created = self._declared("config", self.compose.configs, self.out.external_configs)
        for name, where, _, data in created:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.problem((*where, "file"), "a config must be UTF-8 text")
                continue
            self.out.configs.append(
                ConfigDocument.model_validate(
                    {
                        "apiVersion": API_VERSION,
                        "kind": "Config",
                        "metadata": {"name": name, "labels": {STACK_LABEL: self.stack}},
                        "data": text,
                    }
                )
            )
        return names

    def _valid_name(self, where: Where, name: str, kind: str) -> bool:
        try:
            check_name(name)
        except ValueError as exc:
            self.problem(where, f"the {kind} would be named {name!r}: {exc}")
            return False
        return True

    def _content(
        self,
        where: Where,
        file: str | None,
        environment: str | None,
        content: str | None,
        kind: str,
    ) -> bytes | None:
        given = [
            k
            for k, v in (("file", file), ("environment", environment), ("content", content))
            if v is not None
        ]
        if len(given) != 1:
            choices = "file, environment, content" if kind == "config" else "file, environment"
            self.problem(
                where,
                f"a {kind} needs exactly one of {choices}, or external: true"
                + (f" (got {', '.join(given)})" if given else ""),
            )
            return None
        if file is not None:
            try:
                data = self._path(file).read_bytes()
            except OSError as exc:
                self.problem((*where, "file"), f"cannot read {file}: {exc.strerror or exc}")
                return None
        elif environment is not None:
            value = self.variables.get(environment)
            if value is None:
                self.problem((*where, "environment"), f"variable {environment} is not set")
                return None
            data = value.encode()
        else:
            data = (content or "").encode()
        if not data:
            self.problem(where, f"a {kind} cannot be empty")
            return None
        return data

    # --------------------------------------------------------------- service

    def _service(
        self,
        name: str,
        service: ComposeService,
        secret_names: Mapping[str, str],
        config_names: Mapping[str, str],
    ) -> None:
        here: Where = ("services", name)
        shoal_name = f"{self.stack}-{name}"
        if not DNS_LABEL.match(shoal_name):
            self.problem(
                here,
                f"service {name!r} would be named {shoal_name!r}, which is not a DNS label: "
                "use lower-case letters, digits and '-', at most 63 characters in all",
            )
            return
        origins: dict[tuple[str | int, ...], Where] = {
            ("metadata", "name"): here,
            ("spec",): here,
            ("spec", "template"): here,
        }
        x = service.x_shoal or XShoal()
        runtime = x.runtime or "docker"
        container = BUILTIN_RUNTIMES.get(runtime) is not False
        template: dict[str, Any] = {"runtime": runtime}
        t = ("spec", "template")
        origins[(*t, "runtime")] = (*here, "x-shoal", "runtime")

        def put(key: str, value: Any, *compose_key: str | int) -> None:
            template[key] = value
            origins[(*t, key)] = (*here, *compose_key)

        if service.image is not None:
            put("image", service.image, "image")
        self._command(put, service, container)
        env = self._environment(here, service)
        if env:
            put("env", env, "environment" if service.environment else "env_file")
        if service.working_dir is not None:
            put("workdir", service.working_dir, "working_dir")
        if service.stop_signal is not None:
            put("stopSignal", service.stop_signal, "stop_signal")
        if service.stop_grace_period is not None:
            put("stopGracePeriod", service.stop_grace_period, "stop_grace_period")
        if service.user is not None:
            put("user", service.user, "user")
        # A stack's containers carry its name: their runtime makes ``<stack>.shoal`` their
        # first DNS search domain, so the stack's services resolve by their bare names.
        container_labels = {**service.labels, STACK_LABEL: self.stack} if container else {}
        if container_labels:
            put("labels", container_labels, "labels")
        for key, value in (
            ("capAdd", service.cap_add),
            ("capDrop", service.cap_drop),
        ):
            if value:
                put(key, list(value), "cap_add" if key == "capAdd" else "cap_drop")
        if service.sysctls:
            put("sysctls", dict(service.sysctls), "sysctls")
        if service.init is not None:
            put("init", service.init, "init")
        if service.privileged:
            put("privileged", True, "privileged")
        if service.read_only:
            put("readOnly", True, "read_only")
        if service.ulimits:
            put(
                "ulimits",
                {name: {"soft": u.soft, "hard": u.hard} for name, u in service.ulimits.items()},
                "ulimits",
            )
        if service.devices:
            put(
                "devices",
                [
                    {
                        "host": d.source,
                        "container": d.target or d.source,
                        "permissions": d.permissions,
                    }
                    for d in service.devices
                ],
                "devices",
            )
        policy = x.image_pull_policy or _pull_policy(service.pull_policy)
        if policy is not None:
            put("imagePullPolicy", policy, "x-shoal" if x.image_pull_policy else "pull_policy")
        ports = self._ports(here, service)
        if ports:
            put("ports", ports, "ports")
        mounts = self._mounts(here, service, origins)
        if mounts:
            template["mounts"] = mounts
        refs = self._refs(here, "secrets", service.secrets, secret_names, origins)
        if refs:
            template["secrets"] = refs
        refs = self._refs(here, "configs", service.configs, config_names, origins)
        if refs:
            template["configs"] = refs
        health = self._healthcheck(here, service, x)
        if health is not None:
            put(
                "healthcheck",
                health,
                *(("x-shoal", "healthcheck") if x.healthcheck else ("healthcheck",)),
            )
        if x.sim is not None:
            put("sim", x.sim.to_wire(), "x-shoal", "sim")
        resources = self._resources(here, service, origins)
        if resources:
            template["resources"] = resources

        deploy = service.deploy or Deploy()
        d: Where = (*here, "deploy")
        spec: dict[str, Any] = {"mode": deploy.mode, "template": template}
        origins[("spec", "mode")] = (*d, "mode")
        replicas = deploy.replicas
        if service.scale is not None:
            if replicas is not None and replicas != service.scale:
                self.problem(
                    (*here, "scale"),
                    f"scale ({service.scale}) and deploy.replicas ({replicas}) disagree",
                )
            replicas = service.scale if replicas is None else replicas
        replicas_from = (*d, "replicas") if deploy.replicas is not None else (*here, "scale")
        if deploy.mode == "replicated-job":
            job: dict[str, Any] = {}
            if replicas is not None:
                job = {"completions": max(replicas, 1), "maxConcurrent": max(replicas, 1)}
            if x.job is not None:
                job.update(x.job.model_dump(mode="json", by_alias=True, exclude_unset=True))
            if job:
                spec["job"] = job
                origins[("spec", "job")] = (
                    replicas_from if x.job is None else (*here, "x-shoal", "job")
                )
        elif deploy.mode == "global-job":
            if x.job is not None:
                spec["job"] = x.job.model_dump(mode="json", by_alias=True, exclude_unset=True)
                origins[("spec", "job")] = (*here, "x-shoal", "job")
            if replicas is not None:
                self.problem(replicas_from, "a global-job runs one task per node; remove replicas")
        elif replicas is not None:
            spec["replicas"] = replicas
            origins[("spec", "replicas")] = replicas_from
        if x.job is not None and deploy.mode not in ("replicated-job", "global-job"):
            self.problem(
                (*here, "x-shoal", "job"),
                "only applies to deploy.mode replicated-job or global-job",
            )
        restart = self._restart(here, service, deploy)
        if restart is not None:
            spec["restartPolicy"] = restart
            origins[("spec", "restartPolicy")] = (
                (*d, "restart_policy") if deploy.restart_policy else (*here, "restart")
            )
        placement = self._placement(deploy, d, origins)
        if placement:
            spec["placement"] = placement
        dependencies = self._dependencies(here, service)
        if dependencies:
            spec["dependsOn"] = dependencies
            origins[("spec", "dependsOn")] = (*here, "depends_on")
        for key, block, compose_key in (
            ("update", deploy.update_config, "update_config"),
            ("rollback", deploy.rollback_config, "rollback_config"),
        ):
            if block is not None:
                spec[key] = _update(block)
                origins[("spec", key)] = (*d, compose_key)
        if x.revision_history_limit is not None:
            spec["revisionHistoryLimit"] = x.revision_history_limit
            origins[("spec", "revisionHistoryLimit")] = (*here, "x-shoal")
        labels = {**deploy.labels, STACK_LABEL: self.stack}
        origins[("metadata", "labels")] = (*d, "labels")
        wire = {
            "apiVersion": API_VERSION,
            "kind": "Service",
            "metadata": {"name": shoal_name, "labels": labels},
            "spec": spec,
        }
        try:
            converted = Service.model_validate(wire)
        except ValidationError as exc:
            self.service_error(origins, exc)
            return
        self.out.services.append(converted)
        self.out.compose_names[shoal_name] = name

    def _placement(
        self, deploy: Deploy, d: Where, origins: dict[tuple[str | int, ...], Where]
    ) -> dict[str, Any]:
        keys_ = deploy.placement
        if keys_ is None:
            return {}
        out: dict[str, Any] = {}
        p = (*d, "placement")
        if keys_.constraints:
            out["constraints"] = list(keys_.constraints)
            origins[("spec", "placement", "constraints")] = (*p, "constraints")
        if keys_.preferences:
            out["preferences"] = [{"spread": pref.spread} for pref in keys_.preferences]
            origins[("spec", "placement", "preferences")] = (*p, "preferences")
        if keys_.max_replicas_per_node is not None:
            out["maxReplicasPerNode"] = keys_.max_replicas_per_node
            origins[("spec", "placement", "maxReplicasPerNode")] = (*p, "max_replicas_per_node")
        return out

    def _dependencies(self, here: Where, service: ComposeService) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for name, dependency in service.depends_on.items():
            if name not in self.compose.services:
                if dependency.required:
                    self.problem((*here, "depends_on", name), f"no service {name!r} in this stack")
                else:
                    self.note(
                        (*here, "depends_on", name),
                        "ignored",
                        f"no service {name!r} in this stack (required: false)",
                    )
                continue
            out.append(
                {"service": f"{self.stack}-{name}", "condition": _CONDITIONS[dependency.condition]}
            )
        return out

    def _command(self, put: Callable[..., None], service: ComposeService, container: bool) -> None:
        entrypoint, command = service.entrypoint, service.command
        if container or entrypoint:
            if entrypoint:
                put("command", list(entrypoint), "entrypoint")
            if command:
                put("args", list(command), "command")
        elif command:
            # A process has no image to take an entrypoint from: the command runs.
            put("command", list(command), "command")

    def _environment(self, here: Where, service: ComposeService) -> dict[str, str]:
        env: dict[str, str] = {}
        for index, env_file in enumerate(service.env_file):
            path = self._path(env_file.path)
            where = (*here, "env_file", index)
            try:
                text = path.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                if env_file.required:
                    self.problem(where, f"env file {env_file.path} does not exist")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                self.problem(where, f"cannot read env file {env_file.path}: {exc}")
                continue

            def report(
                line: int, message: str, shown: str = env_file.path, at: Where = where
            ) -> None:
                self.problem(at, f"{shown}:{line}: {message}")

            if env_file.format == "raw":
                for raw in text.splitlines():
                    name, sep, written = raw.partition("=")
                    if sep and not raw.lstrip().startswith("#"):
                        env[name.strip()] = written
            else:
                env.update(parse_env_file(text, self.interpolate, self.environ, report))
        for key, value in service.environment.items():
            if value is None:
                # ``KEY`` alone: the deploying shell's value, or nothing.
                if key in self.environ:
                    env[key] = self.environ[key]
                else:
                    env.pop(key, None)
                    self.note(
                        (*here, "environment", key),
                        "ignored",
                        f"{key} is not set in your environment",
                    )
                continue
            env[key] = value
        return dict(sorted(env.items()))

    def _ports(self, here: Where, service: ComposeService) -> list[dict[str, Any]]:
        ports: list[dict[str, Any]] = []
        ingress = False
        for index, port in enumerate(service.ports):
            where = (*here, "ports", index)
            if port.host_ip not in (None, "0.0.0.0", "::"):
                self.problem(
                    where, "refused: " + keys.KEYS[(*keys.S, "ports", "[]", "host_ip")].reason
                )
                continue
            targets = _port_range(port.target)
            # No published port: the agent picks one on the node (published: 0).
            published = (
                _port_range(port.published)
                if port.published is not None
                else [0] * len(targets or ())
            )
            if targets is None or published is None:
                self.problem(where, f"invalid port range in {port.published}:{port.target}")
                continue
            if len(targets) != len(published):
                self.problem(
                    where,
                    f"the published range {port.published} and the target range {port.target} "
                    "differ in length",
                )
                continue
            ingress = ingress or port.mode == "ingress"
            for p, t in zip(published, targets, strict=True):
                ports.append({"published": p, "target": t, "protocol": port.protocol})
        if ingress:
            self.note(
                (*here, "ports"),
                "not applied",
                "ingress mode: published in host mode, on the nodes that run a task "
                "(shoal has no routing mesh)",
            )
        return ports

    def _mounts(
        self, here: Where, service: ComposeService, origins: dict[tuple[str | int, ...], Where]
    ) -> list[dict[str, Any]]:
        mounts: list[dict[str, Any]] = []
        for index, volume in enumerate(service.volumes):
            where = (*here, "volumes", index)
            mount: dict[str, Any] = {"type": volume.type, "target": volume.target}
            if volume.read_only:
                mount["readOnly"] = True
            if volume.type == "bind":
                if volume.source is None:
                    self.problem(where, "a bind mount needs a source path")
                    continue
                mount["source"] = str(self._path(volume.source))
            elif volume.type == "volume":
                if volume.source is None:
                    self.problem(
                        where,
                        "anonymous volumes are not supported: name the volume "
                        "(NAME:PATH) and declare it under the top-level volumes",
                    )
                    continue
                top = self.compose.volumes.get(volume.source)
                if top is None:
                    self.problem(
                        where,
                        f"volume {volume.source!r} is not declared under the top-level volumes",
                    )
                    continue
                mount["source"] = top.name or (
                    volume.source if top.external else f"{self.stack}_{volume.source}"
                )
            elif volume.tmpfs is not None and volume.tmpfs.size is not None:
                mount["size"] = volume.tmpfs.size
            origins[("spec", "template", "mounts", len(mounts))] = where
            mounts.append(mount)
        for index, text in enumerate(service.tmpfs):
            target, _, options = text.partition(":")
            mount = {"type": "tmpfs", "target": target}
            for option in filter(None, options.split(",")):
                key, _, value = option.partition("=")
                if key == "size":
                    try:
                        mount["size"] = parse_bytes(value)
                    except ValueError as exc:
                        self.problem((*here, "tmpfs", index), str(exc))
            origins[("spec", "template", "mounts", len(mounts))] = (*here, "tmpfs", index)
            mounts.append(mount)
        return mounts

    def _refs(
        self,
        here: Where,
        kind: str,
        refs: list[FileRef],
        names: Mapping[str, str],
        origins: dict[tuple[str | int, ...], Where],
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, ref in enumerate(refs):
            where = (*here, kind, index)
            if ref.source not in names:
                self.problem(
                    where, f"{kind[:-1]} {ref.source!r} is not declared under the top-level {kind}"
                )
                continue
            target = ref.target or (ref.source if kind == "secrets" else "/" + ref.source)
            item: dict[str, Any] = {"source": names[ref.source], "target": target}
            for attribute in ("uid", "gid", "mode"):
                value = getattr(ref, attribute)
                if value is not None:
                    item[attribute] = (
                        int(value) if attribute != "mode" and str(value).isdigit() else value
                    )
            origins[("spec", "template", kind, len(out))] = where
            out.append(item)
        return out

    def _healthcheck(
        self, here: Where, service: ComposeService, x: XShoal
    ) -> dict[str, Any] | None:
        if x.healthcheck is not None:
            return x.healthcheck.to_wire()
        check = service.healthcheck
        if check is None:
            return None
        where = (*here, "healthcheck")
        none = check.test is not None and check.test[0] == "NONE"
        if check.disable:
            if check.test is not None and not none:
                self.problem((*where, "disable"), "disable: true and a test contradict each other")
            return None
        if none:
            return None
        if check.test is None:
            self.note(
                where,
                "not applied",
                "no test: shoal does not run an image's HEALTHCHECK; give test",
            )
            return None
        command = check.test[1:] if check.test[0] == "CMD" else ["/bin/sh", "-c", check.test[1]]
        return {
            "exec": command,
            "interval": format_duration(check.interval if check.interval else HEALTH_INTERVAL),
            "timeout": format_duration(check.timeout if check.timeout else HEALTH_TIMEOUT),
            "retries": check.retries or HEALTH_RETRIES,
            "startPeriod": format_duration(check.start_period or 0.0),
        }

    def _resources(
        self, here: Where, service: ComposeService, origins: dict[tuple[str | int, ...], Where]
    ) -> dict[str, Any]:
        deploy = service.deploy or Deploy()
        resources = deploy.resources
        d = (*here, "deploy", "resources")
        out: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        if resources is not None and resources.limits is not None:
            for key in ("cpus", "memory", "pids"):
                value = getattr(resources.limits, key)
                if value is not None:
                    limits[key] = value
        for key, value, compose_key in (
            ("cpus", service.cpus, "cpus"),
            ("memory", service.mem_limit, "mem_limit"),
            ("pids", service.pids_limit, "pids_limit"),
        ):
            if value is None:
                continue
            if key in limits and limits[key] != value:
                self.problem(
                    (*here, compose_key),
                    f"disagrees with deploy.resources.limits.{key} ({limits[key]})",
                )
            limits[key] = value
        if limits:
            out["limits"] = limits
            origins[("spec", "template", "resources", "limits")] = (*d, "limits")
        if resources is not None and resources.reservations is not None:
            reservations = {
                key: getattr(resources.reservations, key)
                for key in ("cpus", "memory")
                if getattr(resources.reservations, key) is not None
            }
            generic = {
                g.discrete_resource_spec.kind: g.discrete_resource_spec.value
                for g in resources.reservations.generic_resources
            }
            if generic:
                reservations["generic"] = generic
            if reservations:
                out["reservations"] = reservations
                origins[("spec", "template", "resources", "reservations")] = (*d, "reservations")
        return out

    def _restart(
        self, here: Where, service: ComposeService, deploy: Deploy
    ) -> dict[str, Any] | None:
        policy = deploy.restart_policy
        if policy is not None:
            if service.restart is not None:
                self.note((*here, "restart"), "ignored", "deploy.restart_policy is given and wins")
            out: dict[str, Any] = {"condition": policy.condition}
            if policy.delay is not None:
                out["delay"] = policy.delay
            if policy.max_attempts is not None:
                out["maxAttempts"] = policy.max_attempts
            if policy.window is not None:
                out["window"] = policy.window
            return out
        if service.restart is None:
            return None
        if service.restart == "no":
            return {"condition": "none"}
        if service.restart.startswith("on-failure"):
            _, _, attempts = service.restart.partition(":")
            return {"condition": "on-failure", "maxAttempts": int(attempts or 0)}
        return {"condition": "any"}


def _pull_policy(value: str | None) -> str | None:
    return {
        None: None,
        "always": "always",
        "never": "never",
        "missing": "ifNotPresent",
        "if_not_present": "ifNotPresent",
    }[value]


def _update(block: UpdateKeys) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if block.parallelism is not None:
        out["parallelism"] = block.parallelism
    if block.delay is not None:
        out["delay"] = block.delay
    if block.failure_action is not None:
        out["failureAction"] = block.failure_action
    if block.monitor is not None:
        out["monitor"] = block.monitor or DEFAULT_MONITOR
    if block.max_failure_ratio is not None:
        out["maxFailureRatio"] = block.max_failure_ratio
    if block.order is not None:
        out["order"] = block.order
    return out


def _port_range(text: str) -> list[int] | None:
    match = _RANGE.match(text)
    if match is None:
        return None
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if high < low or high - low > 1000:
        return None
    return list(range(low, high + 1))
