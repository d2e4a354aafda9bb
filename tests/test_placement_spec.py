"""Placement preferences, maxReplicasPerNode, generic resources and dependsOn in specs.

Each bad value is refused before anything is sent, naming the file, the line
and the field; good values round-trip through the wire form unchanged, and
specs that use none of them keep the wire form they had.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import SpecError
from shoal.manifest import dump_services, load_paths, load_text
from shoal.models import Service
from shoal.models.resources import resource_env, resource_env_name

HEAD = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  template:
    command: [sleep, "60"]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(HEAD + text, "web.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "  placement:\n    preferences:\n      - spread: zone\n",
            "web.yaml:10: spec.placement.preferences[0].spread: invalid spread descriptor "
            "'zone': use 'node.labels.KEY'",
            id="spread-not-a-label",
        ),
        pytest.param(
            "  placement:\n    preferences:\n      - {spread: node.labels.zone, weight: 2}\n",
            "web.yaml:10: spec.placement.preferences[0].weight: unknown field 'weight'",
            id="preference-unknown-key",
        ),
        pytest.param(
            "  placement:\n    preferences:\n      - pack: node.labels.zone\n",
            "web.yaml:10: spec.placement.preferences[0].pack: unknown field 'pack'",
            id="preference-other-than-spread",
        ),
        pytest.param(
            "  placement:\n    maxReplicasPerNode: -1\n",
            "web.yaml:9: spec.placement.maxReplicasPerNode: input should be greater than or "
            "equal to 0 (got -1)",
            id="max-per-node-negative",
        ),
        pytest.param(
            "  placement:\n    maxReplicasPerNode: two\n",
            "web.yaml:9: spec.placement.maxReplicasPerNode: input should be a valid integer",
            id="max-per-node-word",
        ),
        pytest.param(
            "    resources:\n      reservations:\n        generic: {gpu: 0}\n",
            "web.yaml:10: spec.template.resources.reservations.generic.gpu: input should be "
            "greater than or equal to 1 (got 0)",
            id="generic-zero",
        ),
        pytest.param(
            "    resources:\n      reservations:\n        generic: {gpu: lots}\n",
            "web.yaml:10: spec.template.resources.reservations.generic.gpu: input should be a "
            "valid integer",
            id="generic-not-a-number",
        ),
        pytest.param(
            "    resources:\n      reservations:\n        generic:\n          'my gpu': 1\n",
            "web.yaml:11: spec.template.resources.reservations.generic['my gpu']: invalid "
            "resource name 'my gpu'",
            id="generic-bad-name",
        ),
        pytest.param(
            "    resources:\n      reservations:\n        generic: {gpu: 1, GPU: 1}\n",
            "web.yaml:10: spec.template.resources.reservations.generic: resources 'gpu' and "
            "'GPU' would both be told as SHOAL_RESOURCE_GPU",
            id="generic-same-variable",
        ),
        pytest.param(
            "  dependsOn:\n    - {service: db, condition: ready}\n",
            "web.yaml:9: spec.dependsOn[0].condition: input should be 'started', 'healthy' or "
            "'completed' (got 'ready')",
            id="unknown-condition",
        ),
        pytest.param(
            "  dependsOn:\n    - service: db\n    - service: web\n",
            "web.yaml:10: spec.dependsOn[1].service: a service cannot depend on itself (got 'web')",
            id="self-dependency",
        ),
        pytest.param(
            "  dependsOn:\n    - service: db\n    - {service: db, condition: healthy}\n",
            "web.yaml:10: spec.dependsOn[1].service: 'db' is listed twice",
            id="duplicate-dependency",
        ),
        pytest.param(
            "  dependsOn:\n    - service: Db_1\n",
            "web.yaml:9: spec.dependsOn[0].service: invalid name 'Db_1'",
            id="dependency-not-a-service-name",
        ),
        pytest.param(
            "  dependsOn: [db]\n",
            "web.yaml:8: spec.dependsOn[0]: input should be a valid dictionary",
            id="dependency-short-form",
        ),
    ],
)
def test_bad_values_are_refused_with_file_line_and_field(text: str, expected: str) -> None:
    found = problems(text)
    assert [p for p in found if p.startswith(expected)], found
    # Nothing else, but for a missing 'spread' beside an unknown key.
    assert len(found) == 1 or found[0].endswith("spread: required field is missing"), found


GOOD = (
    HEAD
    + """\
    resources:
      reservations: {cpus: 0.5, generic: {gpu: 2, nvidia.com/fpga: 1}}
  placement:
    constraints: [node.role == worker]
    preferences:
      - spread: node.labels.zone
      - spread: node.labels.rack
    maxReplicasPerNode: 2
  dependsOn:
    - service: db
      condition: healthy
    - service: migrate
      condition: completed
    - service: cache
"""
)


def test_good_values_round_trip() -> None:
    (service,) = load_text(GOOD, "web.yaml")
    assert isinstance(service, Service)
    placement = service.spec.placement
    assert [p.label for p in placement.preferences] == ["zone", "rack"]
    assert placement.max_replicas_per_node == 2
    assert service.spec.template.resources.reservations.generic == {"gpu": 2, "nvidia.com/fpga": 1}
    assert [(d.service, d.condition) for d in service.spec.depends_on] == [
        ("db", "healthy"),
        ("migrate", "completed"),
        ("cache", "started"),  # the default
    ]
    assert load_text(dump_services([service]), "again.yaml") == [service]


def test_specs_without_the_new_fields_keep_their_wire_form() -> None:
    (service,) = load_text(HEAD, "web.yaml")
    assert isinstance(service, Service)
    wire = service.to_wire()["spec"]
    assert "dependsOn" not in wire
    assert wire["placement"] == {"constraints": []}
    assert wire["template"]["resources"]["reservations"] == {"cpus": 0.0, "memory": "0"}


def test_resource_variables() -> None:
    assert resource_env_name("gpu") == "SHOAL_RESOURCE_GPU"
    assert resource_env_name("nvidia.com/gpu") == "SHOAL_RESOURCE_NVIDIA_COM_GPU"
    assert resource_env({"gpu": ["0", "1"], "fpga": ["x"]}) == {
        "SHOAL_RESOURCE_FPGA": "x",
        "SHOAL_RESOURCE_GPU": "0,1",
    }


def service_file(name: str, *deps: str) -> str:
    text = f"apiVersion: shoal/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n"
    if deps:
        text += "  dependsOn:\n" + "".join(f"    - service: {d}\n" for d in deps)
    return text + '  template:\n    command: [sleep, "60"]\n'


def test_a_directory_loads_in_dependency_order(tmp_path: Path) -> None:
    # Files sort a, b, c, d; dependencies say db, then api and cache, then web.
    (tmp_path / "a-web.yaml").write_text(service_file("web", "api", "cache"))
    (tmp_path / "b-api.yaml").write_text(service_file("api", "db"))
    (tmp_path / "c-cache.yaml").write_text(service_file("cache"))
    (tmp_path / "d-db.yaml").write_text(service_file("db", "elsewhere"))  # not here: fine
    names = [d.name for d in load_paths([tmp_path])]
    assert names == ["db", "api", "cache", "web"]


def test_a_cycle_is_refused_at_the_entry_that_closes_it(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service_file("web", "api"))
    (tmp_path / "b.yaml").write_text(service_file("api", "cache", "db"))
    (tmp_path / "c.yaml").write_text(service_file("db", "web") + "---\n" + service_file("cache"))
    with pytest.raises(SpecError) as caught:
        load_paths([tmp_path])
    # One problem for the one cycle, at web's first dependsOn entry (a.yaml line 7).
    assert caught.value.problems == [
        f"{tmp_path / 'a.yaml'}:7: spec.dependsOn[0].service: dependency cycle "
        "web → api → db → web: no member of a cycle could ever start"
    ]
