"""The task listing in pages: ``Get`` of tasks with ``limit`` and ``continue``.

A service of 100,000 replicas does not fit in one reply (the 64 MiB message
limit), and building such a reply holds the manager's event loop for seconds.
So a client asks for ``limit`` tasks at a time; each answer carries, when more
tasks follow, a ``continue`` token to send back for the next page, and how many
tasks matched after this page (``remaining``).

Tasks are listed in one total order over fields a task never changes: its
service, slot, node (for a global service's slot 0, whose node is set when the
task is created; a replicated task's node is not part of the order, since it is
set later), creation time and id. The token names the last task sent by those
fields, not by an offset, so a page starts after that task whether or not it
still exists: a task that exists from the first page to the last is listed
exactly once, while tasks created or deleted between pages are listed at most
once, and never make another task be skipped or repeated. Each page is computed
in one step on the event loop, from the informer's cache at that moment.

A client older than paging sends no ``limit``: it gets every matching task in
one answer, as before, up to ``UNPAGED_TASKS``; beyond that its call fails with
an error naming ``limit``, instead of a reply too large to send.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Iterable
from typing import Any

from shoal.models import Task

# A page holds at most this many tasks, whatever ``limit`` asks for (fewer may come,
# with a token for the rest: a client reads pages until no token comes back).
PAGE_MAX = 5_000
# Without ``limit``, at most this many tasks are answered at once.
UNPAGED_TASKS = 10_000

Order = tuple[str, int, str, float, str]
_KIND = "tasks"


def task_order(task: Task) -> Order:
    """Where ``task`` is in the listing: by fields it keeps for its whole life."""
    node = (task.node_id or "") if task.slot == 0 else ""
    return (task.service, task.slot, node, task.created_at.timestamp(), task.id)


def encode_token(order: Order) -> str:
    """The ``continue`` token after the task at ``order``: opaque to clients."""
    data = json.dumps([_KIND, *order], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_BAD_TOKEN = (
    "continue: not a token of a task listing; send the 'continue' of the last answer "
    "unchanged, or list again from the start without it"
)


def decode_token(value: Any) -> Order | None:
    """The order a ``continue`` token names; None for no token; ValueError naming the field."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError(_BAD_TOKEN)
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError included
        raise ValueError(_BAD_TOKEN) from None
    if not isinstance(data, list) or len(data) != 6 or data[0] != _KIND:
        raise ValueError(_BAD_TOKEN)
    _, service, slot, node, created, task_id = data
    if not (
        isinstance(service, str)
        and isinstance(slot, int)
        and not isinstance(slot, bool)
        and isinstance(node, str)
        and isinstance(created, int | float)
        and not isinstance(created, bool)
        and isinstance(task_id, str)
    ):
        raise ValueError(_BAD_TOKEN)
    return (service, slot, node, float(created), task_id)


def parse_limit(value: Any) -> int | None:
    """``limit``: None (no paging), else a whole number >= 1, at most ``PAGE_MAX``."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"limit: must be a whole number >= 1, tasks per page (got {value!r})")
    return min(value, PAGE_MAX)


def page(tasks: Iterable[Task], limit: int | None, after: Order | None) -> dict[str, Any]:
    """The page of ``tasks`` (already filtered) after ``after``, in listing order:
    ``{"tasks": [...], "remaining": N, "continue": token}`` (``continue`` only when
    tasks remain). Without ``limit``, every task, or ValueError past ``UNPAGED_TASKS``."""
    keyed = [(task_order(t), t) for t in tasks]
    if after is not None:
        keyed = [pair for pair in keyed if pair[0] > after]
    if limit is None:
        if len(keyed) > UNPAGED_TASKS:
            raise ValueError(
                f"limit: {len(keyed)} tasks match, more than one answer carries without "
                f"paging (at most {UNPAGED_TASKS}): ask for them page by page with 'limit' "
                "and 'continue' (a newer shoal CLI does), or narrow the listing (service, "
                "selector)"
            )
        chosen = sorted(keyed)  # orders are unique (the id), so tasks are never compared
    else:
        chosen = heapq.nsmallest(limit, keyed)
    remaining = len(keyed) - len(chosen)
    answer: dict[str, Any] = {"tasks": [t for _, t in chosen], "remaining": remaining}
    if remaining and chosen:
        answer["continue"] = encode_token(chosen[-1][0])
    return answer
