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

Finding where a page starts would mean walking every task of the listing for
each page (200 pages of 500 for 100,000 tasks: most of a minute of the
manager's loop). So the first page sorts the listing's order once and keeps it
(``TaskListings``: the two latest listings, for a minute, named by a random id
that the token carries, with the filters they were made for); a later page
finds its start in it by bisection and takes the tasks that still exist and
still match, in that order. Tasks created after the first page are not in a
kept order and so are not listed, which the rule above allows; a token whose
listing is no longer kept (expired, or another manager answers after a
failover) falls back to walking the tasks, and keeps the order again. A kept
order costs about 140 bytes a task (a tuple, a float and a slot number; the
strings are the tasks' own): 14 MB for 100,000, history included with ``all``.
Two clients paging often (``get tasks -w``, the web UI) can push a third
client's kept order out; its pages then walk the tasks again.

A client older than paging sends no ``limit``: it gets every matching task in
one answer, as before, up to ``UNPAGED_TASKS``; beyond that its call fails with
an error naming ``limit``, instead of a reply too large to send.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from shoal.models import Task

# A page holds at most this many tasks, whatever ``limit`` asks for (fewer may come,
# with a token for the rest: a client reads pages until no token comes back).
PAGE_MAX = 5_000
# Without ``limit``, at most this many tasks are answered at once.
UNPAGED_TASKS = 10_000

Order = tuple[str, int, str, float, str]
_KIND = "tasks"


class Cursor(NamedTuple):
    """Where a ``continue`` token says the next page starts: after ``order``, in the kept
    order of ``listing`` if this manager still has it."""

    order: Order
    listing: str


def task_order(task: Task) -> Order:
    """Where ``task`` is in the listing: by fields it keeps for its whole life."""
    node = (task.node_id or "") if task.slot == 0 else ""
    return (task.service, task.slot, node, task.created_at.timestamp(), task.id)


def encode_token(order: Order, listing: str = "") -> str:
    """The ``continue`` token after the task at ``order``: opaque to clients."""
    data = json.dumps([_KIND, *order, listing], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_BAD_TOKEN = (
    "continue: not a token of a task listing; send the 'continue' of the last answer "
    "unchanged, or list again from the start without it"
)


def decode_token(value: Any) -> Cursor | None:
    """The cursor a ``continue`` token names; None for no token; ValueError naming the field."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise ValueError(_BAD_TOKEN)
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, RecursionError):  # binascii, Unicode, JSON errors; deep nesting
        raise ValueError(_BAD_TOKEN) from None
    if not isinstance(data, list) or len(data) != 7 or data[0] != _KIND:
        raise ValueError(_BAD_TOKEN)
    _, service, slot, node, created, task_id, listing = data
    if not (
        isinstance(service, str)
        and isinstance(slot, int)
        and not isinstance(slot, bool)
        and isinstance(node, str)
        and isinstance(created, int | float)
        and not isinstance(created, bool)
        and isinstance(task_id, str)
        and isinstance(listing, str)
    ):
        raise ValueError(_BAD_TOKEN)
    try:
        at = float(created)
    except OverflowError:  # an integer no float holds
        raise ValueError(_BAD_TOKEN) from None
    if not math.isfinite(at):
        raise ValueError(_BAD_TOKEN)
    return Cursor((service, slot, node, at, task_id), listing)


def parse_limit(value: Any) -> int | None:
    """``limit``: None (no paging), else a whole number >= 1, at most ``PAGE_MAX``."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"limit: must be a whole number >= 1, tasks per page (got {value!r})")
    return min(value, PAGE_MAX)


class TaskListings:
    """Pages of the task listing, with the order of recent listings kept (see above)."""

    def __init__(
        self, keep: int = 2, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keep = keep
        self._ttl = ttl
        self._clock = clock
        # listing id → (kept until, the filters it was made for, its order)
        self._kept: OrderedDict[str, tuple[float, object, list[Order]]] = OrderedDict()

    def page(
        self,
        tasks: Iterable[Task],
        find: Callable[[str], Task | None],
        matches: Callable[[Task], bool],
        filters: object,
        limit: int | None,
        cursor: Cursor | None,
    ) -> dict[str, Any]:
        """The page after ``cursor``: ``{"tasks": [...], "remaining": N, "continue":
        token}`` (``continue`` only while tasks remain; ``remaining`` counts the kept
        order's tasks after the page, some of which may have gone since). ``tasks``
        are those that match ``filters`` (``matches``), ``find`` a task by id. Without
        ``limit``: every task after the cursor, or ValueError past ``UNPAGED_TASKS``."""
        kept = self._kept_order(cursor, filters) if limit is not None else None
        if cursor is not None and kept is not None and limit is not None:
            return _from_kept(kept, cursor, find, matches, limit)
        keyed = [(task_order(t), t) for t in tasks]
        if cursor is not None:
            keyed = [pair for pair in keyed if pair[0] > cursor.order]
        if limit is None and len(keyed) > UNPAGED_TASKS:
            raise ValueError(
                f"limit: {len(keyed)} tasks match, more than one answer carries without "
                f"paging (at most {UNPAGED_TASKS}): ask for them page by page with 'limit' "
                "and 'continue' (a newer shoal CLI does), or narrow the listing (service, "
                "selector)"
            )
        keyed.sort(key=lambda pair: pair[0])  # orders are unique (they end in the id)
        chosen = keyed if limit is None else keyed[:limit]
        answer: dict[str, Any] = {
            "tasks": [t for _, t in chosen],
            "remaining": len(keyed) - len(chosen),
        }
        if answer["remaining"]:
            listing = self._remember(filters, [order for order, _ in keyed])
            answer["continue"] = encode_token(chosen[-1][0], listing)
        return answer

    def _kept_order(self, cursor: Cursor | None, filters: object) -> list[Order] | None:
        now = self._clock()
        for listing in [k for k, (until, _, _) in self._kept.items() if until < now]:
            del self._kept[listing]
        if cursor is None or cursor.listing not in self._kept:
            return None
        _, made_for, order = self._kept[cursor.listing]
        if made_for != filters:
            return None
        self._kept[cursor.listing] = (now + self._ttl, made_for, order)
        self._kept.move_to_end(cursor.listing)
        return order

    def _remember(self, filters: object, order: list[Order]) -> str:
        listing = secrets.token_urlsafe(9)
        self._kept[listing] = (self._clock() + self._ttl, filters, order)
        while len(self._kept) > self._keep:
            self._kept.popitem(last=False)
        return listing


def _from_kept(
    order: list[Order],
    cursor: Cursor,
    find: Callable[[str], Task | None],
    matches: Callable[[Task], bool],
    limit: int,
) -> dict[str, Any]:
    """A page out of a kept order: the tasks after the cursor that still exist, are the
    same task and still match, up to ``limit``."""
    at = bisect.bisect_right(order, cursor.order)
    chosen: list[Task] = []
    while at < len(order) and len(chosen) < limit:
        task = find(order[at][4])
        if task is not None and task_order(task) == order[at] and matches(task):
            chosen.append(task)
        at += 1
    answer: dict[str, Any] = {"tasks": chosen, "remaining": len(order) - at}
    if at < len(order):
        answer["continue"] = encode_token(order[at - 1], cursor.listing)
    return answer
