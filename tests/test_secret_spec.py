"""Secrets, configs, users and limits in specs: bad values are refused with file:line:field.

The same loader as every spec (``shoal.manifest``); these are the fields the
security work added to the template, plus ``kind: Config`` documents and the
refusal of ``kind: Secret`` in a spec file.
"""

from __future__ import annotations

import pytest

from shoal.errors import SpecError
from shoal.manifest import load_text
from shoal.models import Service
from shoal.models.secret import ConfigDocument

HEAD = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  template:
    command: [sleep, '60']
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(text, "web.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        pytest.param(
            HEAD + "    secrets:\n      - {source: 'db pass'}\n",
            9,
            "spec.template.secrets[0].source",
            "invalid name 'db pass'",
            id="secret-source-name",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - source: db\n        target: conf/db\n",
            10,
            "spec.template.secrets[0].target",
            "a secret's target is a file name",
            id="secret-target-with-slash",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - source: db\n        mode: '0999'\n",
            10,
            "spec.template.secrets[0].mode",
            "use octal digits",
            id="mode-not-octal",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - source: db\n        mode: 4095\n",
            10,
            "spec.template.secrets[0].mode",
            "less than or equal to 511",
            id="mode-too-large",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - source: db\n        uid: -1\n",
            10,
            "spec.template.secrets[0].uid",
            "greater than or equal to 0",
            id="negative-uid",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - source: db\n        path: /x\n",
            10,
            "spec.template.secrets[0].path",
            "",
            id="unknown-field-in-reference",
        ),
        pytest.param(
            HEAD + "    secrets:\n      - {source: a, target: x}\n      - {source: b, target: x}\n",
            8,
            "spec.template.secrets",
            "two secrets have the target 'x'",
            id="two-secrets-one-target",
        ),
        pytest.param(
            HEAD + "    configs:\n      - source: app\n        target: /etc/../passwd\n",
            10,
            "spec.template.configs[0].target",
            "without '..'",
            id="config-target-escapes",
        ),
        pytest.param(
            HEAD + "    user: 'a:b:c'\n",
            8,
            "spec.template.user",
            "use USER or USER:GROUP",
            id="user-with-two-colons",
        ),
        pytest.param(
            HEAD + "    user: 'nobody:'\n",
            8,
            "spec.template.user",
            "use USER or USER:GROUP",
            id="user-with-empty-group",
        ),
        pytest.param(
            HEAD + "    resources:\n      limits: {pids: 0}\n",
            9,
            "spec.template.resources.limits.pids",
            "greater than or equal to 1",
            id="pids-zero",
        ),
        pytest.param(
            HEAD + "    resources:\n      limits: {memory: 1Mi}\n",
            9,
            "spec.template.resources.limits.memory",
            "below 4Mi",
            id="memory-too-small",
        ),
        pytest.param(
            HEAD + "    resources:\n      limits: {cpus: 0}\n",
            9,
            "spec.template.resources.limits.cpus",
            "greater than 0",
            id="cpus-zero",
        ),
        pytest.param(
            "apiVersion: shoal/v1\nkind: Secret\nmetadata: {name: db}\ndata: hunter2\n",
            2,
            "kind",
            "create them with: shoal secret create NAME -f FILE",
            id="secret-document",
        ),
        pytest.param(
            "apiVersion: shoal/v1\nkind: Config\nmetadata:\n  name: app\n",
            1,
            "data",
            "required",
            id="config-without-data",
        ),
        pytest.param(
            "apiVersion: shoal/v1\nkind: Config\nmetadata:\n  name: -app\ndata: x\n",
            4,
            "metadata.name",
            "invalid name '-app'",
            id="config-bad-name",
        ),
        pytest.param(
            "apiVersion: shoal/v1\nkind: Config\nmetadata:\n  name: app\ndata: "
            + "x" * (1000 * 1024 + 1)
            + "\n",
            5,
            "data",
            "at most 1000 KiB",
            id="config-too-large",
        ),
    ],
)
def test_bad_value_is_refused_with_file_line_and_field(
    text: str, line: int, field: str, message: str
) -> None:
    found = problems(text)
    prefix = f"web.yaml:{line}: {field}: "
    assert any(p.startswith(prefix) and message in p for p in found), found


def test_secrets_configs_user_and_limits_load() -> None:
    text = (
        HEAD
        + "    user: nobody:nogroup\n"
        + "    secrets:\n      - {source: db-pass, target: db, mode: 0400, uid: 65534}\n"
        + "    configs:\n      - {source: app.conf, target: /etc/app/app.conf}\n"
        + "    resources:\n      limits: {memory: 64Mi, cpus: 0.5, pids: 20}\n"
        + "---\napiVersion: shoal/v1\nkind: Config\nmetadata: {name: app.conf}\n"
        + "data: |\n  listen 8080\n"
    )
    service, config = load_text(text, "web.yaml")
    assert isinstance(service, Service) and isinstance(config, ConfigDocument)
    template = service.spec.template
    assert template.user == "nobody:nogroup"
    (secret,) = template.secrets
    assert (secret.file_name, secret.mode, secret.uid, secret.gid) == ("db", 0o400, 65534, None)
    assert template.configs[0].relative_path == "etc/app/app.conf"
    assert template.resources.limits is not None
    assert template.resources.limits.pids == 20
    assert config.data == "listen 8080\n"
    # Modes read back as octal text, so -o yaml output applies again unchanged.
    assert service.to_wire()["spec"]["template"]["secrets"][0]["mode"] == "0400"
    assert Service.from_wire(service.to_wire()) == service
