"""``discover`` and ``onEndpointsChange`` in specs: what is taken, and the errors, by line."""

from __future__ import annotations

import pytest

from shoal.errors import SpecError
from shoal.manifest import load_text


def spec(template: str, name: str = "client") -> str:
    return (
        "apiVersion: shoal/v1\n"
        "kind: Service\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        "  template:\n"
        "    command: [sleep, '60']\n"
        f"{template}"
    )


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        pytest.param("none", "none", id="none"),
        pytest.param("restart", "restart", id="restart"),
        pytest.param("signal:SIGHUP", "signal:SIGHUP", id="signal"),
        pytest.param("signal:usr1", "signal:SIGUSR1", id="short-lowercase"),
        pytest.param("signal:SIGRTMIN", "signal:SIGRTMIN", id="any-signal"),
    ],
)
def test_accepted_changes(given: str, taken: str) -> None:
    (service,) = load_text(
        spec(f"    discover: [web, db]\n    onEndpointsChange: {given}\n"), "c.yaml"
    )
    assert service.spec.template.discover == ["web", "db"]
    assert service.spec.template.on_endpoints_change == taken


def test_a_plain_spec_says_nothing_about_discovery() -> None:
    (service,) = load_text(spec(""), "c.yaml")
    wire = service.to_wire()["spec"]["template"]
    assert "discover" not in wire and "onEndpointsChange" not in wire


@pytest.mark.parametrize(
    ("template", "line", "message"),
    [
        pytest.param(
            "    discover: [web]\n    onEndpointsChange: signal:SIGNOPE\n",
            9,
            "spec.template.onEndpointsChange: unknown signal 'SIGNOPE'",
            id="unknown-signal",
        ),
        pytest.param(
            "    discover: [web]\n    onEndpointsChange: reload\n",
            9,
            "use none, restart or signal:SIGNAL",
            id="unknown-mode",
        ),
        pytest.param(
            "    discover: [web]\n    onEndpointsChange: signal:KILL\n",
            9,
            "the task cannot handle SIGKILL: use restart",
            id="kill",
        ),
        pytest.param(
            "    onEndpointsChange: restart\n",
            8,
            "onEndpointsChange applies to the services in discover",
            id="nothing-discovered",
        ),
        pytest.param(
            "    discover:\n      - web\n      - Bad_Name\n",
            10,
            "spec.template.discover[1]: invalid name 'Bad_Name'",
            id="bad-name",
        ),
        pytest.param(
            "    discover:\n      - web\n      - web\n",
            10,
            "spec.template.discover[1]: 'web' is listed twice",
            id="twice",
        ),
        pytest.param(
            "    discover:\n      - web\n      - file\n",
            10,
            "spec.template.discover[1]: a service named 'file' cannot be discovered",
            id="file",
        ),
        pytest.param(
            "    discover: [client]\n    onEndpointsChange: restart\n",
            9,
            "a service that discovers itself cannot restart on every change",
            id="restart-on-itself",
        ),
    ],
)
def test_refused_with_file_line_and_field(template: str, line: int, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_text(spec(template), "c.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith(f"c.yaml:{line}: ")
    assert message in problem


def test_a_service_may_discover_itself_with_a_signal() -> None:
    text = spec("    discover: [client]\n    onEndpointsChange: signal:SIGHUP\n")
    (service,) = load_text(text, "c.yaml")
    assert service.spec.template.discover == ["client"]
