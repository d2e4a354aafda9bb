"""Named ports in specs: the old fixed form, the new named and dynamic forms, and errors.

Old specs (``ports: [{published: 8080, target: 80}]``) keep working and are named
after their target; processes may declare ports too, and ``published: 0`` (or
none) leaves the number to the agent. A bad port is refused with the file, the
line and the field.
"""

from __future__ import annotations

import pytest

from shoal.errors import SpecError
from shoal.manifest import dump_services, load_text
from shoal.models import Task, TaskTemplate
from shoal.reconciler.placement import host_ports
from tests.test_container_spec import HEAD, problems


def template_of(body: str) -> TaskTemplate:
    (service,) = load_text(HEAD + body, "web.yaml")
    return service.spec.template


def test_an_old_fixed_port_keeps_working_and_is_named_after_its_target() -> None:
    text = HEAD + "    runtime: docker\n    image: x\n    ports: [{published: 8080, target: 80}]\n"
    (service,) = load_text(text, "web.yaml")
    (port,) = service.spec.template.ports
    assert (port.name, port.published, port.target, port.protocol) == ("80", 8080, 80, "tcp")
    assert host_ports(service.spec.template) == [(8080, "tcp")]
    (again,) = load_text(dump_services([service]), "again.yaml")
    assert again == service


def test_a_process_declares_named_dynamic_ports() -> None:
    template = template_of(
        "    command: [python3, -m, http.server]\n"
        "    ports:\n"
        "      - {name: http}\n"
        "      - {name: admin-api, published: 0, protocol: udp}\n"
        "      - {name: metrics, published: 9100}\n"
    )
    assert [(p.name, p.published, p.protocol) for p in template.ports] == [
        ("http", 0, "tcp"),
        ("admin-api", 0, "udp"),
        ("metrics", 9100, "tcp"),
    ]
    assert [p.env_name for p in template.ports] == [
        "SHOAL_PORT_HTTP",
        "SHOAL_PORT_ADMIN_API",
        "SHOAL_PORT_METRICS",
    ]
    # Only the fixed port is the scheduler's business: dynamic ones never conflict.
    assert host_ports(template) == [(9100, "tcp")]


def test_two_replicas_with_dynamic_ports_may_update_start_first() -> None:
    (service,) = load_text(
        HEAD + "    command: [x]\n    ports: [{name: http}]\n  update: {order: start-first}\n",
        "web.yaml",
    )
    assert service.spec.update is not None and service.spec.update.order == "start-first"
    with pytest.raises(SpecError, match="publish host port"):
        load_text(
            HEAD + "    command: [x]\n    ports: [{name: http, published: 8080}]\n"
            "  update: {order: start-first}\n",
            "web.yaml",
        )


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        pytest.param(
            "    command: [x]\n    ports:\n      - {name: http}\n      - {name: http}\n",
            10,
            "spec.template.ports[1].name",
            "port name 'http' used twice",
            id="name-twice",
        ),
        pytest.param(
            "    command: [x]\n    ports:\n      - {name: Web_UI}\n",
            9,
            "spec.template.ports[0].name",
            "invalid port name 'Web_UI'",
            id="not-a-dns-label",
        ),
        pytest.param(
            "    command: [x]\n    ports:\n      - {protocol: tcp}\n",
            9,
            "spec.template.ports[0]",
            "a port needs a name (or a target",
            id="no-name-no-target",
        ),
        pytest.param(
            "    command: [x]\n    ports:\n      - {name: http, published: 70000}\n",
            9,
            "spec.template.ports[0].published",
            "less than or equal to 65535",
            id="published-out-of-range",
        ),
        pytest.param(
            "    command: [x]\n    ports: [{name: http}]\n    healthcheck: {tcp: {port: web}}\n",
            9,
            "spec.template.healthcheck.tcp.port",
            "the probe's port 'web' is not one of the template's ports (http)",
            id="probe-names-an-unknown-port",
        ),
        pytest.param(
            "    command: [x]\n    ports:\n      - {name: a, published: 80}\n"
            "      - {name: b, published: 80}\n",
            8,
            "spec.template.ports",
            "host port 80/tcp published twice",
            id="same-fixed-port-twice",
        ),
    ],
)
def test_bad_ports_are_refused_with_file_line_and_field(
    body: str, line: int, field: str, message: str
) -> None:
    (problem,) = problems(body)
    assert problem.startswith(f"web.yaml:{line}: {field}: "), problem
    assert message in problem


def test_a_task_status_carries_its_ports() -> None:
    raw = {
        "id": "t1",
        "service": "web",
        "slot": 1,
        "createdAt": "2026-01-01T00:00:00Z",
        "template": {"command": ["x"], "ports": [{"name": "http"}]},
        "status": {
            "state": "running",
            "ports": [{"name": "http", "port": 20417, "protocol": "tcp"}],
            "containerAddress": "172.17.0.2",
        },
    }
    task = Task.from_wire(raw)
    assert task.status.ports[0].port == 20417
    assert Task.from_wire(task.to_wire()) == task
    # A status without ports (an older agent) says nothing of them on the wire.
    bare = task.model_copy(update={"status": task.status.model_copy(update={"ports": []})})
    assert "ports" not in bare.to_wire()["status"]
