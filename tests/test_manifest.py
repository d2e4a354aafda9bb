"""shoal.manifest: YAML spec documents in, validated Services or one SpecError out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.errors import SpecError
from shoal.manifest import MAX_DOCUMENT_BYTES, dump_services, load_paths, load_text
from shoal.models import Service, ServiceStatus

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A valid document; the malformed cases below are small edits of it, written
# out in full so that the expected line numbers can be read off the text.
GOOD = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  replicas: 2
  template:
    command: [/bin/sleep, "60"]
"""


def write(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def problems_of(tmp_path: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_paths(write(tmp_path, files))
    return caught.value.problems


MALFORMED = [
    pytest.param(
        {"a.yaml": GOOD.replace("  name: web", "  name: web: x")},
        "a.yaml",
        4,
        "",
        "mapping values are not allowed",
        id="yaml-syntax-error",
    ),
    pytest.param(
        {"a.yaml": GOOD + "[unclosed\n"},
        "a.yaml",
        10,
        "",
        "invalid YAML",
        id="yaml-syntax-error-at-end",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  replicas: 2", "\treplicas: 2")},
        "a.yaml",
        6,
        "",
        "a tab at column 1; YAML indents with spaces only: replace the tab with spaces",
        id="tab-indent",
    ),
    pytest.param(
        {"a.yaml": GOOD + "extra: 1\n"},
        "a.yaml",
        9,
        "extra",
        "unknown field",
        id="unknown-field-top",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  replicas: 2", "  replicas: 2\n  replica: 3")},
        "a.yaml",
        7,
        "spec.replica",
        "did you mean 'replicas'",
        id="unknown-field-spec",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    cmd: [x]\n"},
        "a.yaml",
        9,
        "spec.template.cmd",
        "unknown field",
        id="unknown-field-template",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("replicas: 2", "replicas: -1")},
        "a.yaml",
        6,
        "spec.replicas",
        "greater than or equal to 0",
        id="negative-replicas",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("replicas: 2", "replicas: three")},
        "a.yaml",
        6,
        "spec.replicas",
        "valid integer",
        id="replicas-word",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    env: [A=1]\n"},
        "a.yaml",
        9,
        "spec.template.env",
        "dictionary",
        id="env-is-a-list",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    env:\n      PORT: 8080\n"},
        "a.yaml",
        10,
        "spec.template.env.PORT",
        "quote it",
        id="env-value-not-a-string",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    stopGracePeriod: 10 parsecs\n"},
        "a.yaml",
        9,
        "spec.template.stopGracePeriod",
        "invalid duration",
        id="bad-duration",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    stop_grace_period: soon\n"},
        "a.yaml",
        9,
        "spec.template.stop_grace_period",
        "invalid duration",
        id="bad-duration-snake-case-key-as-written",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    resources:\n      reservations:\n        memory: 2 bananas\n"},
        "a.yaml",
        11,
        "spec.template.resources.reservations.memory",
        "invalid size",
        id="bad-size",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace('[/bin/sleep, "60"]', "[]")},
        "a.yaml",
        8,
        "spec.template.command",
        "at least 1 item",
        id="empty-command-list",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace('[/bin/sleep, "60"]', '""')},
        "a.yaml",
        8,
        "spec.template.command",
        "at least 1 item",
        id="empty-string-command",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace('[/bin/sleep, "60"]', '["", x]')},
        "a.yaml",
        8,
        "spec.template.command[0]",
        "at least 1 character",
        id="empty-command-word",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    runtime: Docker!\n"},
        "a.yaml",
        9,
        "spec.template.runtime",
        "invalid runtime name 'Docker!'",
        id="bad-runtime-name",
    ),
    pytest.param(
        {
            "a.yaml": GOOD
            + "  placement:\n    constraints:\n      - node.role == worker\n"
            + "      - zone = eu\n"
        },
        "a.yaml",
        12,
        "spec.placement.constraints[1]",
        "invalid constraint",
        id="bad-constraint",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("name: web", "name: Web")},
        "a.yaml",
        4,
        "metadata.name",
        "invalid name",
        id="name-upper-case",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("name: web", "name: web_app")},
        "a.yaml",
        4,
        "metadata.name",
        "invalid name",
        id="name-underscore",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  name: web", "  name: web\n  labels:\n    bad key!: x")},
        "a.yaml",
        6,
        "metadata.labels['bad key!']",
        "invalid label key",
        id="bad-label-key",
    ),
    pytest.param(
        {"a.yaml": GOOD, "b.yaml": "# same name again\n" + GOOD},
        "b.yaml",
        5,
        "metadata.name",
        "first defined at " + "{tmp}/a.yaml:4",
        id="duplicate-name-two-files",
    ),
    pytest.param(
        {"a.yaml": GOOD + "---\n" + GOOD},
        "a.yaml",
        13,
        "metadata.name",
        "duplicate Service name 'web' (first defined at ",
        id="duplicate-name-same-file",
    ),
    pytest.param(
        {
            "a.yaml": GOOD
            + "---\n"
            + GOOD.replace("name: web", "name: big")
            + f'    env: {{BIG: "{"x" * MAX_DOCUMENT_BYTES}"}}\n'
        },
        "a.yaml",
        9,
        "",
        "limit is 1 MiB",
        id="oversized-document",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("shoal/v1", "apps/v1")},
        "a.yaml",
        1,
        "apiVersion",
        "expected 'shoal/v1'",
        id="wrong-api-version",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("kind: Service\n", "")},
        "a.yaml",
        1,
        "kind",
        "missing; expected Config, Service",
        id="missing-kind",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("kind: Service", "kind: Deployment")},
        "a.yaml",
        2,
        "kind",
        "unknown kind 'Deployment'",
        id="unknown-kind",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  replicas: 2", "  replicas: 2\n  replicas: 3")},
        "a.yaml",
        7,
        "spec.replicas",
        "duplicate key 'replicas' (first at line 6)",
        id="duplicate-key",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  replicas: 2", "  mode: global\n  replicas: 2")},
        "a.yaml",
        7,
        "spec.replicas",
        "global service",
        id="replicas-on-global-service",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  restartPolicy:\n    condition: sometimes\n"},
        "a.yaml",
        10,
        "spec.restartPolicy.condition",
        "'on-failure'",
        id="bad-restart-condition",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    stopSignal: SIGBOGUS\n"},
        "a.yaml",
        9,
        "spec.template.stopSignal",
        "unknown signal",
        id="bad-stop-signal",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    workdir: srv/app\n"},
        "a.yaml",
        9,
        "spec.template.workdir",
        "absolute path",
        id="relative-workdir",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    env:\n      LOG: debug\n      SHOAL_TASK_SLOT: '9'\n"},
        "a.yaml",
        11,
        "spec.template.env.SHOAL_TASK_SLOT",
        "reserved",
        id="reserved-shoal-env-var",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace(
                'spec:\n  replicas: 2\n  template:\n    command: [/bin/sleep, "60"]\n',
                "spec:\n  replicas: 2\n",
            )
        },
        "a.yaml",
        5,
        "spec.template",
        "required field is missing",
        id="missing-template",
    ),
    pytest.param(
        {"a.yaml": "- just\n- a list\n"},
        "a.yaml",
        1,
        "",
        "expected a mapping",
        id="document-is-a-list",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  name: web", "  name: &n web") + "    args: [*n]\n"},
        "a.yaml",
        9,
        "",
        "aliases",
        id="alias",
    ),
    pytest.param(
        {"a.yaml": GOOD + "    <<: {args: [x]}\n"},
        "a.yaml",
        9,
        "spec.template",
        "merge keys",
        id="merge-key",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    parallelism: -1\n"},
        "a.yaml",
        10,
        "spec.update.parallelism",
        "greater than or equal to 0",
        id="update-parallelism-negative",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    maxFailureRatio: 1.5\n"},
        "a.yaml",
        10,
        "spec.update.maxFailureRatio",
        "less than or equal to 1",
        id="update-ratio-above-1",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    maxFailureRatio: -0.1\n"},
        "a.yaml",
        10,
        "spec.update.maxFailureRatio",
        "greater than or equal to 0",
        id="update-ratio-negative",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    order: sideways\n"},
        "a.yaml",
        10,
        "spec.update.order",
        "'stop-first' or 'start-first'",
        id="update-order-unknown",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    failureAction: explode\n"},
        "a.yaml",
        10,
        "spec.update.failureAction",
        "'pause', 'continue' or 'rollback'",
        id="update-failure-action-unknown",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    monitor: 5x\n"},
        "a.yaml",
        10,
        "spec.update.monitor",
        "invalid duration",
        id="update-monitor-bad-duration",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    delay: -1\n"},
        "a.yaml",
        10,
        "spec.update.delay",
        "cannot be negative",
        id="update-delay-negative",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    progressDeadline: 0s\n"},
        "a.yaml",
        10,
        "spec.update.progressDeadline",
        "more than 0s",
        id="update-progress-deadline-zero",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    canary: -1\n"},
        "a.yaml",
        10,
        "spec.update.canary",
        "greater than or equal to 0",
        id="update-canary-negative",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    canary: 3\n"},
        "a.yaml",
        10,
        "spec.update.canary",
        "canary (3) cannot exceed replicas (2)",
        id="update-canary-above-replicas",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    autoPromote: true\n"},
        "a.yaml",
        10,
        "spec.update.autoPromote",
        "needs canary",
        id="update-auto-promote-without-canary",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  update:\n    paralelism: 2\n"},
        "a.yaml",
        10,
        "spec.update.paralelism",
        "did you mean 'parallelism'",
        id="update-unknown-field",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  rollback:\n    failureAction: rollback\n"},
        "a.yaml",
        10,
        "spec.rollback.failureAction",
        "never rolled back",
        id="rollback-of-a-rollback",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  rollback:\n    canary: 1\n"},
        "a.yaml",
        10,
        "spec.rollback.canary",
        "unknown field",
        id="rollback-has-no-canary",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  rollback:\n    parallelism: -2\n"},
        "a.yaml",
        10,
        "spec.rollback.parallelism",
        "greater than or equal to 0",
        id="rollback-parallelism-negative",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  rollback:\n    maxFailureRatio: 2\n"},
        "a.yaml",
        10,
        "spec.rollback.maxFailureRatio",
        "less than or equal to 1",
        id="rollback-ratio-above-1",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  revisionHistoryLimit: 0\n"},
        "a.yaml",
        9,
        "spec.revisionHistoryLimit",
        "greater than or equal to 1",
        id="revision-history-limit-zero",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace(
                '    command: [/bin/sleep, "60"]',
                "    runtime: docker\n    image: busybox\n"
                "    ports: [{published: 8080, target: 80}]",
            )
            + "  update:\n    order: start-first\n"
        },
        "a.yaml",
        11,
        "spec.update",
        "publish host port(s) 8080/tcp",
        id="start-first-with-host-port",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + '  job:\n    schedule: "61 * * * *"\n'
        },
        "a.yaml",
        10,
        "spec.job.schedule",
        "invalid cron expression",
        id="job-bad-cron",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + '  job:\n    schedule: "@every 5x"\n'
        },
        "a.yaml",
        10,
        "spec.job.schedule",
        "invalid duration",
        id="job-bad-every",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    timeZone: Mars/Olympus\n"
        },
        "a.yaml",
        10,
        "spec.job.timeZone",
        "unknown time zone",
        id="job-unknown-time-zone",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    completions: 0\n"
        },
        "a.yaml",
        10,
        "spec.job.completions",
        "greater than or equal to 1",
        id="job-completions-zero",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    completions: 2\n    maxConcurrent: 3\n"
        },
        "a.yaml",
        11,
        "spec.job.maxConcurrent",
        "cannot exceed completions",
        id="job-concurrency-above-completions",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    backoffLimit: -1\n"
        },
        "a.yaml",
        10,
        "spec.job.backoffLimit",
        "greater than or equal to 0",
        id="job-backoff-negative",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    concurrencyPolicy: Sometimes\n"
        },
        "a.yaml",
        10,
        "spec.job.concurrencyPolicy",
        "'Allow', 'Forbid' or 'Replace'",
        id="job-concurrency-policy-unknown",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  job:\n    activeDeadline: soon\n"
        },
        "a.yaml",
        10,
        "spec.job.activeDeadline",
        "invalid duration",
        id="job-active-deadline-bad",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n")
            + "  update:\n    parallelism: 2\n"
        },
        "a.yaml",
        9,
        "spec.update",
        "has no 'update' settings",
        id="job-with-update",
    ),
    pytest.param(
        {"a.yaml": GOOD.replace("  replicas: 2\n", "  mode: replicated-job\n  replicas: 2\n")},
        "a.yaml",
        7,
        "spec.replicas",
        "use job.completions",
        id="job-with-replicas",
    ),
    pytest.param(
        {"a.yaml": GOOD + "  job:\n    completions: 3\n"},
        "a.yaml",
        9,
        "spec.job",
        "only applies to mode replicated-job or global-job",
        id="completions-on-a-service",
    ),
    pytest.param(
        {
            "a.yaml": GOOD.replace("  replicas: 2\n", "  mode: global-job\n")
            + "  job:\n    completions: 3\n"
        },
        "a.yaml",
        9,
        "spec.job",
        "completions does not apply",
        id="global-job-with-completions",
    ),
    # The unclosed "[" is only noticed at the next key; the message names where it opened.
    pytest.param(
        {"deep/er/a.yml": GOOD.replace("replicas: 2", "replicas: [")},
        "deep/er/a.yml",
        8,
        "",
        "flow sequence at line 6",
        id="syntax-error-in-nested-file",
    ),
]


@pytest.mark.parametrize(("files", "filename", "line", "path", "reason"), MALFORMED)
def test_malformed_spec_is_refused_with_location(
    tmp_path: Path, files: dict[str, str], filename: str, line: int, path: str, reason: str
) -> None:
    problems = problems_of(tmp_path, files)
    prefix = f"{tmp_path / filename}:{line}: " + (f"{path}: " if path else "")
    reason = reason.replace("{tmp}", str(tmp_path))
    matching = [p for p in problems if p.startswith(prefix) and reason in p]
    assert matching, f"no problem starts with {prefix!r} and mentions {reason!r}: {problems}"


def test_all_problems_of_all_files_are_reported_together(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {
            "a.yaml": GOOD.replace("replicas: 2", "replicas: -1") + "    workdir: rel\n",
            "b.yaml": GOOD.replace("name: web", "name: B"),
            "c.yaml": GOOD.replace("name: web", "name: fine"),
        },
    )
    assert len(problems) == 3
    assert problems[0].startswith(f"{tmp_path / 'a.yaml'}:6: spec.replicas: ")
    assert problems[1].startswith(f"{tmp_path / 'a.yaml'}:9: spec.template.workdir: ")
    assert problems[2].startswith(f"{tmp_path / 'b.yaml'}:4: metadata.name: ")


def test_documents_before_a_syntax_error_are_still_checked() -> None:
    text = GOOD.replace("replicas: 2", "replicas: -1") + "---\nkey: [\n"
    with pytest.raises(SpecError) as caught:
        load_text(text, "x.yaml")
    assert [p.split(":")[1] for p in caught.value.problems] == ["6", "11"]


def test_missing_path_and_empty_directory_are_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError) as caught:
        load_paths([tmp_path / "nope.yaml", tmp_path / "empty"])
    assert caught.value.problems == [
        f"{tmp_path / 'nope.yaml'}: no such file or directory",
        f"{tmp_path / 'empty'}: no *.yaml or *.yml files in this directory",
    ]


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    text = GOOD + "    env:\n" + "".join(f"      {line}\n" for line in lines)
    with pytest.raises(SpecError) as caught:
        load_text(text, "bomb.yaml")
    assert all("aliases" in p for p in caught.value.problems)


MULTI = """\
# two services in one file; empty documents are skipped
---
---
apiVersion: shoal/v1
kind: Service
metadata:
  name: api
  labels: {tier: backend}
spec:
  mode: replicated
  replicas: 4
  template:
    runtime: process
    command: "sh -c 'echo hi; sleep 1'"
    args: [--verbose]
    env: {LOG_LEVEL: debug}
    workdir: /srv
    stopSignal: int
    stopGracePeriod: 1m30s
    resources:
      reservations: {cpus: 1.5, memory: 256Mi}
  restartPolicy:
    condition: on-failure
    delay: 500ms
    maxAttempts: 3
    window: 2m
  placement:
    constraints: ["node.labels.zone == a", "node.hostname != db1"]
---
apiVersion: shoal/v1
kind: Service
metadata: {name: agent}
spec:
  mode: global
  template: {command: [/bin/true], resources: {reservations: {memory: 1G}}}
"""


def test_multi_document_file_with_all_fields_loads() -> None:
    api, agent = load_text(MULTI, "multi.yaml")
    assert api.name == "api"
    assert api.metadata.labels == {"tier": "backend"}
    spec = api.spec
    assert (spec.mode, spec.replicas) == ("replicated", 4)
    template = spec.template
    assert template.command == ["sh", "-c", "echo hi; sleep 1"]  # shlex-split
    assert template.args == ["--verbose"]
    assert template.env == {"LOG_LEVEL": "debug"}
    assert template.workdir == "/srv"
    assert template.stop_signal == "SIGINT"
    assert template.stop_grace_period == 90.0
    assert template.resources.reservations.cpus == 1.5
    assert template.resources.reservations.memory == 256 * 1024 * 1024
    policy = spec.restart_policy
    assert (policy.condition, policy.delay, policy.max_attempts, policy.window) == (
        "on-failure",
        0.5,
        3,
        120.0,
    )
    assert spec.placement.constraints == ["node.labels.zone == a", "node.hostname != db1"]
    assert agent.spec.mode == "global"
    assert agent.spec.replicas is None
    assert agent.spec.template.resources.reservations.memory == 1_000_000_000


def test_directories_load_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "b.yaml": GOOD.replace("name: web", "name: b"),
            "a/z.yml": GOOD.replace("name: web", "name: az"),
            "a/deeper/c.yaml": GOOD.replace("name: web", "name: adc"),
            "notes.txt": "not: yaml to load",
        },
    )
    extra = tmp_path.parent / f"{tmp_path.name}-extra.yaml"
    extra.write_text(GOOD.replace("name: web", "name: extra"))
    services = load_paths([tmp_path, extra])
    assert [s.name for s in services] == ["adc", "az", "b", "extra"]


@pytest.mark.parametrize("name", ["hello.yaml", "global-sleep.yaml", "all-fields.yaml"])
def test_example_loads(name: str) -> None:
    (service,) = load_paths([EXAMPLES / name])
    assert service.name == name.removesuffix(".yaml")


def test_hello_example_runs_three_shell_loops() -> None:
    (hello,) = load_paths([EXAMPLES / "hello.yaml"])
    assert hello.spec.replicas == 3
    assert hello.spec.template.runtime == "process"
    assert hello.spec.template.command[:2] == ["/bin/sh", "-c"]
    assert "$SHOAL_TASK_SLOT" in hello.spec.template.command[2]


def test_dump_then_load_round_trips() -> None:
    # The spec examples (examples/compose/ holds Compose files, not specs).
    services = load_paths(sorted(EXAMPLES.glob("*.yaml"))) + load_text(MULTI, "multi.yaml")
    # As `get -o yaml` would show it: with the manager's fields filled in.
    now = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    shown = services[0].model_copy(
        update={
            "metadata": services[0].metadata.model_copy(
                update={"generation": 3, "created_at": now, "updated_at": now}
            ),
            "status": ServiceStatus(desired_tasks=2, running_tasks=1, observed_generation=3),
        }
    )
    services[0] = shown
    text = dump_services(services)
    again = load_text(text, "dumped.yaml")
    assert again == services
    assert dump_services(again) == text


def test_dump_of_nothing_loads_as_nothing() -> None:
    assert load_text(dump_services([]), "empty.yaml") == []


def test_service_type_is_returned() -> None:
    assert all(isinstance(s, Service) for s in load_text(GOOD, "good.yaml"))
