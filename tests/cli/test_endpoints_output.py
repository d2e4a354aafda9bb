"""What ``shoal endpoints`` prints for each output format (no cluster needed)."""

from __future__ import annotations

import json

import pytest

from shoal.cli.endpoints import show

ITEM = {
    "service": "web",
    "endpoints": [
        {
            "service": "web",
            "taskId": "3f9c0a1d2b4e5f60",
            "slot": 1,
            "nodeId": "n1",
            "address": "127.0.0.2",
            "ports": [{"name": "http", "port": 20417, "protocol": "tcp"}],
        },
        {
            "service": "web",
            "taskId": "81d2e7f0c3a5b6c7",
            "slot": 2,
            "nodeId": "n2",
            "address": "10.0.0.3",
            "ports": [{"name": "http", "port": 31044, "protocol": "tcp", "target": 80}],
            "containerAddress": "172.17.0.2",
        },
    ],
}


def test_the_table_shows_address_and_ports_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    show(ITEM, "table", watching=False)
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["TASK", "SLOT", "NODE", "ADDRESS", "PORTS"]
    assert first.split() == ["3f9c0a1d2b4e", "1", "n1", "127.0.0.2", "http=20417/tcp"]
    assert second.split()[3:] == ["10.0.0.3", "http=31044/tcp", "(->172.17.0.2:80)"]


def test_json_is_the_managers_answer_one_line_per_change_with_watch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show(ITEM, "json", watching=True)
    show({"service": "web", "endpoints": []}, "json", watching=True)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [ITEM, {"service": "web", "endpoints": []}]


def test_an_empty_or_deleted_service_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    show({"service": "web", "endpoints": []}, "table", watching=False)
    show({"service": "web", "deleted": True}, "table", watching=True)
    assert capsys.readouterr().out.splitlines() == [
        "no healthy endpoints of service 'web'",
        "service 'web' was deleted",
    ]
