"""What the CLI checks of a spec itself before sending it (``shoal.specfiles``).

The manager validates the documents it is sent; what JSON would change or cannot
carry on the way must be refused here, at its line, or the manager would see a
different spec than the user wrote (``labels: {on: x}`` would arrive as the label
``"true"``).
"""

from __future__ import annotations

import pytest

from shoal.specfiles import describe_data, read_text

HEAD = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  replicas: 1
  template:
    command: [sleep, "60"]
"""


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        pytest.param(
            "    labels: {on: x}\n",
            "a.yaml:9: spec.template.labels.on: this key is a boolean in YAML; "
            "quote it in the YAML to make it a string",
            id="boolean-key",
        ),
        pytest.param(
            "    env:\n      1: x\n",
            "a.yaml:10: spec.template.env['1']: this key is a number in YAML; "
            "quote it in the YAML to make it a string",
            id="number-key",
        ),
        pytest.param(
            "    env:\n      WHEN: 2026-01-01 10:00:00\n",
            "a.yaml:10: spec.template.env.WHEN: a date or time; "
            "quote it in the YAML to make it a string",
            id="timestamp",
        ),
        pytest.param(
            "    stopGracePeriod: .inf\n",
            "a.yaml:9: spec.template.stopGracePeriod: input should be a finite number (got .inf)",
            id="infinity",
        ),
        pytest.param(
            "    env: !!binary aGVsbG8=\n",
            "a.yaml:9: spec.template.env: !!binary is not allowed in a spec; "
            "write the text instead",
            id="binary",
        ),
    ],
)
def test_what_json_would_change_is_refused_at_its_line(tail: str, problem: str) -> None:
    spec = read_text(HEAD + tail, "a.yaml")
    assert spec.problems() == [problem]
    assert spec.documents == []  # nothing of that document is sent


def test_quoted_keys_and_values_go_through() -> None:
    spec = read_text(HEAD + '    labels: {"on": x}\n    env: {WHEN: "2026-01-01"}\n', "a.yaml")
    assert spec.problems() == []
    assert [d.data["spec"]["template"]["labels"] for d in spec.documents] == [{"on": "x"}]


@pytest.mark.parametrize("value", [5, True, "web", {"service": "db"}])
def test_a_depends_on_that_is_no_list_is_left_to_validation(value: object) -> None:
    document = {"kind": "Service", "metadata": {"name": "web"}, "spec": {"dependsOn": value}}
    assert describe_data(document) == ("Service", "web", [])


def test_the_kinds_the_cli_checks_are_the_kinds_the_models_validate() -> None:
    # specfiles checks a document's kind without loading the models; manifest maps
    # each kind to its model; the manager applies APPLIED (configs come apart).
    from shoal.manifest import APPLIED, MODELS
    from shoal.specfiles import KIND_NAMES, REFUSED_KINDS

    assert set(MODELS) == KIND_NAMES
    assert set(APPLIED) == KIND_NAMES - {"Config"}
    assert not set(REFUSED_KINDS) & KIND_NAMES
