"""Formatting and resolution helpers of the CLI, tested in-process."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.cli.output import (
    Progress,
    dump,
    format_age,
    is_terminal,
    nodes_table,
    render_table,
    services_table,
    tasks_table,
    truncate,
)
from shoal.cli.waiting import rollout_state
from shoal.models import TaskState
from shoal.paths import default_state_dir


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        pytest.param(None, "-", id="unknown"),
        pytest.param(-3.0, "0s", id="clock-skew"),
        pytest.param(0.4, "0s", id="zero"),
        pytest.param(59.9, "59s", id="seconds"),
        pytest.param(60, "1m", id="minute"),
        pytest.param(3599, "59m", id="minutes"),
        pytest.param(2 * 3600 + 59 * 60, "2h", id="hours"),
        pytest.param(4 * 86400 + 3600, "4d", id="days"),
    ],
)
def test_format_age(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


def test_render_table_aligns_columns() -> None:
    text = render_table(["NAME", "STATE"], [["web.1", "running"], ["a", "failed"]])
    assert text.splitlines() == [
        "NAME   STATE",
        "web.1  running",
        "a      failed",
    ]


def test_truncate_keeps_one_line() -> None:
    assert truncate("a\nb", 10) == "a b"
    assert truncate("x" * 50, 10) == "xxxxxxx..."


def _iso(ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=ago)).isoformat().replace("+00:00", "Z")


def _task(slot: int, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"abcdef{slot}0000",
        "name": f"web.{slot}.abcdef{slot}0",
        "service": "web",
        "slot": slot,
        "nodeId": "n1",
        "desiredState": "running",
        "status": {"state": state, "timestamp": _iso(150), **extra},
        "template": {"command": ["/bin/true"]},
    }


def test_tasks_table() -> None:
    rows = tasks_table([_task(1, "running", pid=42), _task(0, "failed", exitCode=3)]).splitlines()
    assert rows[0].split() == [
        "NAME",
        "SERVICE",
        "SLOT",
        "NODE",
        "DESIRED",
        "STATE",
        "AGE",
        "MESSAGE",
    ]
    assert rows[1].split() == ["web.1.abcdef10", "web", "1", "n1", "running", "running", "2m"]
    assert rows[2].split()[2] == "-"  # a global service's task has no slot number
    wide = tasks_table([_task(1, "failed", exitCode=3, error="exited with code 3")], wide=True)
    assert wide.splitlines()[1].split()[8:] == ["3", "-", "-", "-", "exited", "with", "code", "3"]
    gpu = tasks_table([{**_task(1, "running"), "resources": {"gpu": ["0", "1"]}}], wide=True)
    assert gpu.splitlines()[0].split()[10] == "RESOURCES"
    assert gpu.splitlines()[1].split()[10] == "gpu=0,1"
    ports = [{"name": "http", "port": 20417, "protocol": "tcp"}]
    served = tasks_table([_task(1, "running", ports=ports)], wide=True).splitlines()
    assert served[0].split()[11] == "PORTS"
    assert served[1].split()[11] == "http=20417/tcp"


def test_services_table() -> None:
    view = {
        "metadata": {"name": "web", "createdAt": _iso(3 * 3600)},
        "spec": {
            "mode": "replicated",
            "template": {"runtime": "process", "command": ["/bin/echo"], "args": ["a b"]},
        },
        "status": {"desiredTasks": 3, "runningTasks": 2},
    }
    row = services_table([view]).splitlines()[1]
    assert row.split() == ["web", "replicated", "2/3", "process", "/bin/echo", "'a", "b'", "3h"]


def test_dump_round_trips() -> None:
    data = {"items": [{"b": 1, "a": [1, 2]}]}
    assert json.loads(dump(data, "json")) == data
    assert yaml.safe_load(dump(data, "yaml")) == data
    assert dump(data, "yaml").index("b:") < dump(data, "yaml").index("a:")  # order kept


def test_rollout_state() -> None:
    template = {"command": ["/bin/true"]}
    view = {"spec": {"template": template}, "status": {"desiredTasks": 2}}
    old = {**_task(2, "running"), "template": {"command": ["/bin/false"]}}
    waiting = rollout_state({"service": view, "tasks": [_task(1, "running"), old]})
    assert not waiting.done
    assert waiting.summary() == "1/2 updated task(s) running, 1 old task(s) still running"
    done = rollout_state(
        {"service": view, "tasks": [_task(1, "running"), _task(2, "running"), _task(2, "failed")]}
    )
    assert done.done
    notes = rollout_state({"service": view, "tasks": [], "notes": {"1": "gave up"}})
    assert "slot 1: gave up" in notes.summary()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"SHOAL_STATE_DIR": "/s", "XDG_STATE_HOME": "/x"}, Path("/s"), id="explicit"),
        pytest.param({"XDG_STATE_HOME": "/x"}, Path("/x/shoal"), id="xdg"),
        pytest.param({"XDG_STATE_HOME": "rel"}, Path.home() / ".local/state/shoal", id="xdg-rel"),
        pytest.param({}, Path.home() / ".local/state/shoal", id="home"),
    ],
)
def test_default_state_dir(env: dict[str, str], expected: Path) -> None:
    assert default_state_dir(env) == expected


def test_wide_nodes_show_the_address_others_reach_the_node_at() -> None:
    node = {
        "id": "n1",
        "description": {"hostname": "h1", "cpus": 2, "memory": 1 << 30},
        "status": {
            "state": "ready",
            "address": "ipv4:10.0.0.5:41234",
            "advertiseAddress": "192.0.2.7",
        },
    }
    header, row = nodes_table([node], wide=True).splitlines()
    assert row.split()[header.split().index("ADDRESS")] == "192.0.2.7"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_one_line_per_change_without_the_clock() -> None:
    log = io.StringIO()
    progress = Progress(log)
    for text, elapsed in [
        ("web: 1/3 updated task(s) running", "1s"),
        ("web: 1/3 updated task(s) running", "2s"),
        ("web: 2/3 updated task(s) running", "3s"),
        ("web: 2/3 updated task(s) running", "4s"),
        ("web: 3/3 updated task(s) running", "5s"),
    ]:
        progress.update(text, elapsed)
    progress.clear()
    assert log.getvalue().splitlines() == [
        "web: 1/3 updated task(s) running",
        "web: 2/3 updated task(s) running",
        "web: 3/3 updated task(s) running",
    ]


def test_progress_on_a_terminal_rewrites_one_line_with_the_clock() -> None:
    screen = _Terminal()
    progress = Progress(screen)
    progress.update("web: 1/3 running", "1s")
    progress.update("web: 1/3 running", "2s")
    progress.clear()
    assert screen.getvalue() == ("\r\x1b[Kweb: 1/3 running 1s\r\x1b[Kweb: 1/3 running 2s\r\x1b[K")
    assert "\n" not in screen.getvalue()


@pytest.mark.parametrize("state", [*TaskState, "a-state-of-a-newer-manager"])
def test_a_task_is_terminal_as_the_models_say(state: str) -> None:
    # The CLI reads states from the wire without loading the models.
    known = state in set(TaskState)
    assert is_terminal({"status": {"state": str(state)}}) == (known and TaskState(state).terminal)
