"""Container fields and healthchecks in specs: what is refused at apply time, and where.

Each bad spec must be refused before anything is sent, naming the file, the
line and the field, so a user who wrote ``mounts`` under ``runtime: process``
learns it from ``shoal apply``, not from a task that silently ignores it.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shoal.errors import SpecError
from shoal.manifest import dump_services, load_text
from shoal.models import TaskTemplate
from shoal.models.container import BUILTIN_RUNTIMES
from shoal.runtimes.process import ProcessRuntime
from shoal.runtimes.registry import available_runtime_classes, runtime_catalogue

HEAD = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  template:
"""


def problems(template: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(HEAD + template, "web.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("template", "line", "field", "message"),
    [
        pytest.param(
            "    command: [sleep, '1']\n    image: busybox\n",
            8,
            "spec.template.image",
            "'image' only applies to container runtimes (docker, podman), not runtime 'process'",
            id="image-for-process",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    ports:\n      - {name: http, published: 80}\n",
            10,
            "spec.template.ports[0].target",
            "runtime 'docker' needs the port's target",
            id="container-port-without-target",
        ),
        pytest.param(
            "    command: [sleep, '1']\n    capAdd: [NET_ADMIN]\n",
            8,
            "spec.template.capAdd",
            "'capAdd' only applies to container runtimes",
            id="caps-for-process",
        ),
        pytest.param(
            "    runtime: sim\n    command: [sleep, '1']\n    resources:\n"
            "      limits: {memory: 1Gi}\n",
            9,
            "spec.template.resources",
            "'resources.limits' is enforced for runtimes docker, podman, process only",
            id="limits-for-sim",
        ),
        pytest.param(
            "    runtime: docker\n    command: [sleep, '1']\n",
            6,
            "spec.template.image",
            "runtime 'docker' needs an image",
            id="docker-without-image",
        ),
        pytest.param(
            "    runtime: process\n",
            6,
            "spec.template.command",
            "runtime 'process' needs a command",
            id="process-without-command",
        ),
        pytest.param(
            "    runtime: podman\n    image: x\n    ports:\n"
            "      - {published: 80, target: 80}\n      - {published: 80, target: 81}\n",
            9,
            "spec.template.ports",
            "host port 80/tcp published twice",
            id="same-host-port-twice",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    mounts:\n"
            "      - {type: bind, source: relative/dir, target: /data}\n",
            10,
            "spec.template.mounts[0]",
            "a bind mount needs source: an absolute path",
            id="bind-mount-relative-source",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    devices: ['dev/fuse']\n",
            9,
            "spec.template.devices[0]",
            "device paths must be absolute",
            id="device-relative",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    imagePullPolicy: sometimes\n",
            9,
            "spec.template.imagePullPolicy",
            "ifNotPresent",
            id="bad-pull-policy",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    ulimits:\n      nofiles: 10\n",
            10,
            "spec.template.ulimits.nofiles",
            "unknown ulimit 'nofiles'",
            id="ulimit-unknown",
        ),
        pytest.param(
            "    runtime: docker\n    image: x\n    ulimits:\n      nofile: {soft: 9, hard: 5}\n",
            10,
            "spec.template.ulimits.nofile",
            "soft (9) is above hard (5)",
            id="ulimit-soft-above-hard",
        ),
        pytest.param(
            "    command: [sleep, '1']\n    readOnly: true\n",
            8,
            "spec.template.readOnly",
            "'readOnly' only applies to container runtimes",
            id="read-only-for-process",
        ),
        pytest.param(
            "    command: [sleep, '1']\n    healthcheck:\n      exec: [\"true\"]\n"
            "      tcp: {port: 80}\n",
            8,
            "spec.template.healthcheck",
            "exactly one of exec, http, tcp",
            id="healthcheck-two-probes",
        ),
        pytest.param(
            "    command: [sleep, '1']\n    healthcheck:\n      http: {port: 0}\n",
            9,
            "spec.template.healthcheck.http.port",
            "greater than or equal to 1",
            id="healthcheck-bad-port",
        ),
    ],
)
def test_bad_container_specs_are_refused_with_field_and_line(
    template: str, line: int, field: str, message: str
) -> None:
    (problem,) = problems(template)
    assert problem.startswith(f"web.yaml:{line}: {field}: "), problem
    assert message in problem


def test_a_full_container_spec_round_trips() -> None:
    text = HEAD + (
        "    runtime: docker\n"
        "    image: shoal-test/busybox:latest\n"
        "    imagePullPolicy: never\n"
        "    command: [httpd]\n"
        "    args: [-f]\n"
        "    user: '1000:1000'\n"
        "    labels: {team: web}\n"
        "    ports: [{published: 8080, target: 80, protocol: udp}]\n"
        "    mounts:\n"
        "      - {type: bind, source: /srv, target: /srv, readOnly: true}\n"
        "      - {type: volume, source: cache, target: /cache}\n"
        "      - {type: tmpfs, target: /tmp, size: 64Mi}\n"
        "    resources: {limits: {cpus: 0.5, memory: 256Mi}}\n"
        "    capAdd: [cap_net_admin]\n"
        "    capDrop: [CHOWN]\n"
        "    sysctls: {net.core.somaxconn: '1024'}\n"
        "    privileged: true\n"
        "    devices: ['/dev/fuse', {host: /dev/null, container: /dev/n, permissions: r}]\n"
        "    init: true\n"
        "    healthcheck: {http: {port: 80, path: /healthz}, interval: 2s, startPeriod: 10s}\n"
    )
    (service,) = load_text(text, "web.yaml")
    template = service.spec.template
    assert template.cap_add == ["NET_ADMIN"]
    assert [d.as_string() for d in template.devices] == [
        "/dev/fuse:/dev/fuse:rwm",
        "/dev/null:/dev/n:r",
    ]
    assert template.mounts[2].size == 64 * 1024 * 1024
    assert template.healthcheck is not None and template.healthcheck.kind == "http"
    (again,) = load_text(dump_services([service]), "again.yaml")
    assert again == service


def test_healthcheck_is_accepted_for_every_runtime() -> None:
    for runtime in ("process", "sim"):
        (service,) = load_text(
            HEAD + f"    runtime: {runtime}\n    command: [x]\n"
            "    healthcheck: {tcp: {port: 5432}}\n",
            "web.yaml",
        )
        assert service.spec.template.healthcheck is not None


# -- which runtimes take container fields: each runtime says so itself -------


class BoxRuntime(ProcessRuntime):
    """A third-party runtime that runs containers (as far as specs are concerned)."""

    name = "box"
    container_fields = True


def validate(template: dict[str, object], catalogue: dict[str, bool]) -> TaskTemplate:
    return TaskTemplate.model_validate(template, context={"runtimes": catalogue})


def test_a_plugin_that_declares_container_fields_takes_them() -> None:
    catalogue = runtime_catalogue({"process": ProcessRuntime, "box": BoxRuntime})
    assert catalogue == {"box": True, "process": False}

    template = validate(
        {"runtime": "box", "image": "img", "ports": [{"published": 8080, "target": 80}]}, catalogue
    )
    assert template.image == "img"
    with pytest.raises(ValidationError, match="runtime 'box' needs an image"):
        validate({"runtime": "box", "command": ["x"]}, catalogue)
    with pytest.raises(ValidationError, match=r"only applies to container runtimes \(box\)"):
        validate({"runtime": "process", "command": ["x"], "image": "img"}, catalogue)


def test_with_the_managers_catalogue_an_unknown_runtime_is_refused() -> None:
    catalogue = runtime_catalogue({"process": ProcessRuntime})
    with pytest.raises(ValidationError, match=r"unknown runtime 'box' \(known: process\)"):
        validate({"runtime": "box", "command": ["x"]}, catalogue)


def test_the_builtin_runtimes_declare_what_the_cli_assumes_of_them() -> None:
    # The CLI checks specs without importing runtimes, from BUILTIN_RUNTIMES;
    # the runtimes' own declarations must say the same.
    classes = available_runtime_classes()
    assert {name: classes[name].container_fields for name in BUILTIN_RUNTIMES} == BUILTIN_RUNTIMES
