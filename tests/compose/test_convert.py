"""Compose files converted to shoal documents, and the report of every key shoal did not apply.

The files under ``files/`` were written for these tests, as users write
Compose files (anchors, merge keys, interpolation, ``.env``, env files,
overrides); ``expected/`` holds what ``shoal stack convert`` prints for them:
the documents on stdout and the report on stderr. Paths of the checkout are
shown as ``<files>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.cli.main import main
from shoal.compose import load_stack
from shoal.errors import SpecError
from shoal.manifest import load_text

FILES = Path(__file__).parent / "files"
EXPECTED = Path(__file__).parent / "expected"


def convert(
    capsys: pytest.CaptureFixture[str], directory: Path, *files: str, stack: str = ""
) -> tuple[int, str, str]:
    """``shoal stack convert`` run in ``directory``: exit code, stdout, stderr."""
    here = Path.cwd()
    os.chdir(directory)
    try:
        args = ["stack", "convert"]
        for name in files:
            args += ["-c", name]
        code = main([*args, *([stack] if stack else [])])
    finally:
        os.chdir(here)
    out, err = capsys.readouterr()
    if code == 0:
        # What convert prints is what apply reads: every document loads back.
        assert {d.kind for d in load_text(out, "convert")} <= {"Service", "Config"}
    return code, out.replace(str(FILES), "<files>"), err


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAG", "WEB_REPLICAS", "MESSAGE", "FROM_SHELL", "X"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FROM_SHELL", "from-the-shell")


@pytest.mark.parametrize(
    ("directory", "files", "expected"),
    [
        pytest.param("webapp", ["compose.yaml"], "webapp", id="webapp"),
        pytest.param(
            "webapp", ["compose.yaml", "compose.prod.yaml"], "webapp-prod", id="webapp-override"
        ),
    ],
)
@pytest.mark.usefixtures("environment")
def test_convert_prints_documents_and_report(
    capsys: pytest.CaptureFixture[str], directory: str, files: list[str], expected: str
) -> None:
    code, out, err = convert(capsys, FILES / directory, *files)
    assert (code, err) == (0, (EXPECTED / f"{expected}.report").read_text())
    assert out == (EXPECTED / f"{expected}.yaml").read_text()


@pytest.mark.usefixtures("environment")
def test_the_conversion_follows_docker_stack_deploy() -> None:
    stack = load_stack([FILES / "webapp" / "compose.yaml"], None, dict(os.environ))
    assert stack.name == "webapp"  # the file's name: key
    services = {s.name: s for s in stack.services}
    web = services["webapp-web"].spec
    # entrypoint → command, command (a string, split as a shell would) → args
    assert (web.template.command, web.template.args) == (
        ["httpd", "-f"],
        ["-p", "8080", "-h", "/srv"],
    )
    # .env gives TAG and WEB_REPLICAS; the environment wins over env_file; a key
    # without a value comes from the shell
    assert web.template.image == "shoal-test/busybox:1.36"
    assert web.replicas == 3
    assert web.template.env["GREETING"] == "hello"
    assert web.template.env["APP_MODE"] == "production"
    assert web.template.env["FROM_SHELL"] == "from-the-shell"
    assert web.template.env["RAW"] == "$notinterpolated"
    # Docker's healthcheck defaults where the file gives none; CMD → exec
    assert web.template.healthcheck is not None
    assert (web.template.healthcheck.interval, web.template.healthcheck.timeout) == (5.0, 30.0)
    assert web.template.healthcheck.exec == ["wget", "-q", "-O-", "http://127.0.0.1:8080/"]
    # monitor 0 is Swarm's default, 5 s
    assert web.update is not None and web.update.monitor == 5.0
    assert [(d.service, d.condition) for d in web.depends_on] == [
        ("webapp-db", "healthy"),
        ("webapp-migrate", "completed"),
    ]
    db = services["webapp-db"].spec.template
    assert db.healthcheck is not None and db.healthcheck.exec == [
        "/bin/sh",
        "-c",
        "test -e /tmp/ready",
    ]
    assert [(s.source, s.file_name, s.mode) for s in db.secrets] == [
        ("webapp_db_password", "db_password", 0o444),
        ("webapp_db_password", "password.txt", 0o400),
    ]
    assert [(c.source, c.container_path) for c in db.configs] == [("webapp_db_conf", "/db_conf")]
    assert [(m.type, m.source) for m in db.mounts] == [
        ("volume", "webapp_dbdata"),
        ("bind", str(FILES / "webapp" / "seed")),
        ("tmpfs", None),
    ]
    assert [(s.name, s.data) for s in stack.secrets] == [("webapp_db_password", b"s3cret\n")]
    job = services["webapp-migrate"].spec
    assert (job.mode, job.job_config.completions, job.job_config.max_concurrent) == (
        "replicated-job",
        2,
        2,
    )


@pytest.mark.usefixtures("environment")
def test_later_files_override_earlier_ones() -> None:
    webapp = FILES / "webapp"
    stack = load_stack([webapp / "compose.yaml", webapp / "compose.prod.yaml"], "prod", {})
    services = {s.name: s.spec for s in stack.services}
    web = services["prod-web"]
    assert web.replicas == 4  # a scalar is replaced
    assert web.template.args == ["-p", "8081", "-h", "/srv"]  # a command is replaced whole
    # environment merges as a mapping although the override writes a list
    assert (web.template.env["GREETING"], web.template.env["EXTRA"]) == ("bonjour", "1")
    # ports merge by target: 8080 is now published on 28080; 9090/udp is kept
    assert [(p.published, p.target) for p in web.template.ports] == [(28080, 8080), (19090, 9090)]
    db = services["prod-db"].template
    assert db.cap_add == ["NET_ADMIN", "SYS_TIME"]  # lists are appended
    assert db.healthcheck is None  # !reset drops what the first file set
    cache = services["prod-cache"]
    assert (cache.mode, cache.placement.max_replicas_per_node) == ("global", 1)
    assert [p.label for p in cache.placement.preferences] == ["zone"]
    assert cache.template.resources.reservations.generic == {"gpu": 1}


def test_dot_env_lines_see_the_lines_above_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HOST=db\nURL=postgres://${HOST}:5432\nTAG=1\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: 'x:${TAG}'\n    environment: [URL=$URL]\n"
    )
    stack = load_stack([tmp_path / "compose.yaml"], "app", {"TAG": "2"})
    (web,) = stack.services
    assert web.spec.template.env == {"URL": "postgres://db:5432"}
    assert web.spec.template.image == "x:2"


def test_override_tag_replaces_instead_of_merging(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "services:\n  web:\n    image: x\n    ports: ['8080:80', '8443:443']\n"
        "    environment: {A: '1', B: '2'}\n"
    )
    (tmp_path / "over.yaml").write_text(
        "services:\n  web:\n    ports: !override ['9090:90']\n    environment: {B: '3'}\n"
    )
    stack = load_stack([tmp_path / "base.yaml", tmp_path / "over.yaml"], "app", {})
    (web,) = stack.services
    assert [(p.published, p.target) for p in web.spec.template.ports] == [(9090, 90)]
    assert web.spec.template.env == {"A": "1", "B": "3"}


def test_a_port_without_a_published_one_is_left_to_the_agent(tmp_path: Path) -> None:
    # As `docker stack deploy` publishes "80" on a port the engine picks.
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: x\n    ports: ['80', '9000-9001/udp', '8080:8080']\n"
    )
    (web,) = load_stack([tmp_path / "compose.yaml"], "app", {}).services
    ports = [(p.name, p.published, p.target, p.protocol) for p in web.spec.template.ports]
    assert ports == [
        ("80", 0, 80, "tcp"),
        ("9000", 0, 9000, "udp"),
        ("9001", 0, 9001, "udp"),
        ("8080", 8080, 8080, "tcp"),
    ]


def test_x_shoal_runs_plain_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE", "hi")
    stack = load_stack([FILES / "processes" / "compose.yaml"], "procs", dict(os.environ))
    services = {s.name: s.spec for s in stack.services}
    ticker = services["procs-ticker"]
    assert ticker.template.runtime == "process"
    # a process has no image entrypoint: the command runs; $$ is a literal $
    assert ticker.template.command == [
        "sh",
        "-c",
        "while true; do echo tick $SHOAL_TASK_SLOT; sleep 1; done",
    ]
    assert ticker.template.env == {"MESSAGE": "hi"}
    assert ticker.restart_policy.condition == "on-failure"
    assert ticker.restart_policy.max_attempts == 3
    once = services["procs-once"]
    assert (once.template.command, once.template.args) == (["echo"], ["done"])
    assert once.job_config.backoff_limit == 1


# ------------------------------------------------------------------ bad input


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_stack([path], "app", environ or {}, shown=["compose.yaml"])
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "services:\n  web:\n    image: x\nservice:\n  db: {}\n",
            ["compose.yaml:4: service: unknown field 'service' (did you mean 'services'?)"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    environment:\n      - A=${X:?X is required}\n",
            ["compose.yaml:5: services.web.environment[0]: X is required"],
            id="required-variable-unset",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: three\n",
            [
                "compose.yaml:5: services.web.deploy.replicas: input should be a valid integer, "
                "unable to parse string as an integer (got 'three')"
            ],
            id="wrong-type",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    privileged: maybe\n",
            [
                "compose.yaml:4: services.web.privileged: input should be a valid boolean, "
                "unable to interpret input (got 'maybe')",
            ],
            id="wrong-type-bool",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    extends:\n      service: base\n",
            [
                "compose.yaml:4: services.web.extends: refused: not supported (nor by docker "
                "stack deploy): use YAML anchors, <<: *name"
            ],
            id="refused-key",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    deploy:\n      resources:\n"
            "        reservations:\n          devices: [{capabilities: [gpu]}]\n",
            [
                "compose.yaml:7: services.web.deploy.resources.reservations.devices: refused: "
                "use generic_resources (named countable resources the agents advertise)"
            ],
            id="refused-nested-key",
        ),
        pytest.param(
            "services:\n  Web_1:\n    image: x\n",
            [
                "compose.yaml:2: services.Web_1: service 'Web_1' would be named 'app-Web_1', "
                "which is not a DNS label: use lower-case letters, digits and '-', at most 63 "
                "characters in all"
            ],
            id="not-a-dns-label",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    cap_add: [not a cap]\n",
            [
                "compose.yaml:4: services.web.cap_add (spec.template.capAdd[0]): "
                "invalid capability 'not a cap' (e.g. NET_ADMIN, SYS_TIME, ALL)"
            ],
            id="shoal-refuses-a-value",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    x-shoal: {runtime: process}\n",
            [
                "compose.yaml:2: services.web (spec.template.command): runtime 'process' needs a "
                "command "
                "(a list of at least 1 item)",
                "compose.yaml:3: services.web.image: 'image' only applies to container runtimes "
                "(docker, podman), not runtime 'process' (got 'x')",
            ],
            id="process-with-image",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    depends_on: [db]\n    secrets: [pw]\n",
            [
                "compose.yaml:4: services.web.depends_on.db: no service 'db' in this stack",
                "compose.yaml:5: services.web.secrets[0]: secret 'pw' is not declared under the "
                "top-level secrets",
            ],
            id="undeclared-references",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    image: y\n",
            ["compose.yaml:4: services.web.image: duplicate key 'image' (first at line 3)"],
            id="duplicate-key",
        ),
        pytest.param(
            "services:\n  web:\n    image: [x\n",
            [
                "compose.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>' "
                "(while parsing a flow sequence at line 3)"
            ],
            id="syntax-error",
        ),
        pytest.param(
            "services:\n  web:\n    image: x\n    volumes: [cache:/cache]\n",
            [
                "compose.yaml:4: services.web.volumes[0]: volume 'cache' is not declared under "
                "the top-level volumes"
            ],
            id="undeclared-volume",
        ),
    ],
)
def test_bad_input_is_located(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(tmp_path, text) == expected


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    lines = ["x-0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        previous = f"*a{level - 1}"
        lines.append(f"x-{level}: &a{level} [{', '.join([previous] * 9)}]")
    lines.append("services: {web: {image: x, labels: {a: b}}}")
    found = problems(tmp_path, "\n".join(lines) + "\n")
    assert found == ["compose.yaml:1: the file expands to more than 200000 nodes through aliases"]


def test_env_file_problems_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("OK=1\nnot valid=2\n")
    found = problems(
        tmp_path,
        "services:\n  web:\n    image: x\n    env_file: [app.env, missing.env]\n",
    )
    assert found == [
        "compose.yaml:4: services.web.env_file[0]: app.env:2: invalid variable name "
        "'not valid' (expected NAME=VALUE)",
        "compose.yaml:4: services.web.env_file[1]: env file missing.env does not exist",
    ]


def test_an_override_file_is_named_in_its_problems(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("services:\n  web:\n    image: x\n")
    (tmp_path / "over.yaml").write_text("services:\n  web:\n    deploy:\n      replicas: -1\n")
    with pytest.raises(SpecError) as caught:
        load_stack(
            [tmp_path / "base.yaml", tmp_path / "over.yaml"],
            "app",
            {},
            shown=["base.yaml", "over.yaml"],
        )
    assert caught.value.problems == [
        "over.yaml:4: services.web.deploy.replicas: input should be greater than or equal to 0 "
        "(got -1)"
    ]


def test_deploy_with_a_bad_file_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: x\n    extends: base\n")
    # No manager listens here: a deploy that tried to connect would say so.
    code = main(
        ["stack", "deploy", "--server", "127.0.0.1:1", "-c", str(tmp_path / "compose.yaml"), "app"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: 1 problem in the spec; nothing was applied:\n")
    assert "compose.yaml:4: services.web.extends: refused:" in err
    assert "127.0.0.1:1" not in err
