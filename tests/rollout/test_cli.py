"""What ``shoal rollout`` and ``shoal job`` print, from the views the manager sends."""

from __future__ import annotations

from shoal.cli.jobs import runs_table
from shoal.cli.rollout import progress_line


def test_progress_line_names_the_state_batch_and_counts() -> None:
    view = {
        "spec": {"update": {"parallelism": 2}},
        "status": {"update": {"state": "updating", "revision": 3, "updated": 2, "total": 5}},
    }
    assert progress_line("web", view) == "service/web: updating, revision 3, batch 2/3, 2/5 updated"


def test_progress_line_of_a_rollback_uses_the_rollback_parallelism() -> None:
    view = {
        "spec": {"update": {"parallelism": 1}, "rollback": {"parallelism": 5}},
        "status": {
            "update": {"state": "rollback_started", "revision": 1, "updated": 0, "total": 5}
        },
    }
    assert "batch 1/1" in progress_line("web", view)


def test_runs_table_lists_runs_and_the_schedule() -> None:
    view = {
        "status": {
            "job": {
                "runs": [
                    {
                        "number": 4,
                        "state": "failed",
                        "failed": 7,
                        "reason": "backoffLimit 6 exceeded",
                    },
                    {"number": 5, "state": "active", "active": 1},
                ],
                "nextRunAt": "2026-12-01T10:00:00Z",
                "skipped": 2,
            }
        }
    }
    text = runs_table(view)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["RUN", "STATE", "OK/FAILED/ACTIVE"]
    assert "backoffLimit 6 exceeded" in lines[1] and "0/7/0" in lines[1]
    assert "skipped runs: 2" in text


def test_describe_of_a_service_without_an_update_says_so() -> None:
    from shoal.cli.describe import describe_service

    view = {"metadata": {"name": "web"}, "spec": {"template": {"command": ["x"]}}, "status": {}}
    text = describe_service({"service": view, "tasks": []})
    assert "Rollout:\n  <no update yet>" in text
