"""``retry_on_conflict``: a lost race is computed again, anything else is not retried."""

from __future__ import annotations

import pytest

from shoal.errors import ConflictError, NotFoundError
from shoal.store.retry import retry_on_conflict


async def test_a_lost_race_is_tried_again_until_it_wins() -> None:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls))
        if len(calls) < 3:
            raise ConflictError("lost")
        return "written"

    assert await retry_on_conflict(attempt, "node n1", pause=0) == "written"
    assert len(calls) == 3


async def test_after_the_last_attempt_the_conflict_names_what_kept_changing() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ConflictError("lost")

    with pytest.raises(ConflictError, match="node 'n1' kept changing; try again"):
        await retry_on_conflict(attempt, "node 'n1'", attempts=4, pause=0)
    assert calls == 4


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise NotFoundError("node 'n1' not found")

    with pytest.raises(NotFoundError):
        await retry_on_conflict(attempt, "node 'n1'", pause=0)
    assert calls == 1
