"""Update, rollback and job settings survive the wire: what the CLI sends, the manager accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.manifest import load_paths
from shoal.models import Service

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_examples_round_trip_through_the_wire() -> None:
    # The spec examples (examples/compose/ holds Compose files, not specs).
    services = [d for d in load_paths(sorted(EXAMPLES.glob("*.yaml"))) if isinstance(d, Service)]
    assert {"all-fields", "nightly-backup"} <= {s.name for s in services}
    for service in services:
        assert Service.model_validate(service.to_wire()) == service


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"mode": "global-job", "job": {}}, id="global-job-defaults"),
        pytest.param({"mode": "replicated-job", "job": {"completions": 3}}, id="replicated-job"),
        pytest.param(
            {"replicas": 4, "update": {"canary": 2, "autoPromote": True}}, id="canary-auto"
        ),
        pytest.param({"rollback": {"failureAction": "continue"}}, id="rollback-continue"),
    ],
)
def test_specs_round_trip_through_the_wire(spec: dict[str, object]) -> None:
    service = Service.model_validate(
        {"metadata": {"name": "x"}, "spec": {"template": {"command": ["true"]}, **spec}}
    )
    assert Service.model_validate(service.to_wire()) == service
