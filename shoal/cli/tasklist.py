"""``shoal get tasks``: the task listing, fetched page by page and printed as it comes.

One service can have 100,000 tasks, more than one answer can carry. The CLI
asks for ``--chunk-size`` tasks at a time (``Get`` with ``limit``) and sends
back the manager's ``continue`` token for the next page, printing each page as
it arrives (``output.Listing``: a table whose header comes once, or one
``{"items": [...]}`` document for ``-o json|yaml``), so the first lines show at
once and memory stays one page. ``--limit`` stops after that many tasks (the
rest are counted on stderr). The manager lists in an order that new and deleted
tasks cannot shift (``shoal.manager.taskpages``), so a task is printed at most
once even while the service changes. A manager older than paging answers every
task in its first answer, without a token: that is the whole list.
"""

from __future__ import annotations

import sys

from shoal.cli import output, remote
from shoal.errors import ShoalError

TYPE_CHECKING = False  # not from typing: see shoal.cli.main
if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator
    from typing import Any

    from shoal.api.client import ControlClient

# Tasks per page unless --chunk-size says otherwise (kubectl's default chunk).
CHUNK = 500


async def task_pages(
    control: ControlClient,
    service: str | None,
    all_tasks: bool,
    selector: str | None,
    chunk: int = CHUNK,
    limit: int | None = None,
) -> AsyncIterator[tuple[list[dict[str, Any]], int]]:
    """Each page of tasks and how many more tasks match after it, until the last page
    or ``limit`` tasks in all. ``chunk`` 0 asks for every task in one answer."""
    token: str | None = None
    given = 0
    while True:
        wanted = chunk or None
        if limit is not None:
            wanted = min(wanted or limit, limit - given)
        response = await control.get_page(
            "tasks",
            service=service,
            all_tasks=all_tasks,
            selector=selector,
            limit=wanted,
            token=token,
        )
        items: list[dict[str, Any]] = response.get("items", [])
        remaining = int(response.get("remaining") or 0)
        if limit is not None and len(items) > limit - given:  # a manager that ignores limit
            remaining += len(items) - (limit - given)
            items = items[: limit - given]
        given += len(items)
        following = response.get("continue")
        if following is not None and (not isinstance(following, str) or following == token):
            raise ShoalError("the manager answered a page of tasks that does not move on")
        yield items, remaining
        if not following or (limit is not None and given >= limit):
            return
        token = following


async def all_tasks(control: ControlClient, service: str | None = None) -> list[dict[str, Any]]:
    """Every live task (of ``service``), page by page."""
    found: list[dict[str, Any]] = []
    async for items, _ in task_pages(control, service, False, None):
        found += items
    return found


def list_tasks(args: argparse.Namespace, service: str | None, history: bool) -> int:
    """``get tasks`` without a name: printed page by page."""
    wide = args.output == "wide"
    listing = output.Listing(args.output, lambda items: output.task_rows(items, wide))

    async def run(control: ControlClient) -> int:
        left = 0
        chunk = CHUNK if args.chunk_size is None else args.chunk_size
        pages = task_pages(control, service, history, args.selector, chunk, args.limit)
        async for items, left in pages:  # noqa: B007 (the last page's count is the answer)
            if service and not items and listing.count == 0:
                # Like `get services nope`: a service that does not exist is an error
                # (NOT_FOUND, exit 1), not an empty list.
                await control.get("services", name=service)
            listing.add(items)
        return left

    remaining = remote.unary(args, run)
    listing.close()
    if listing.count == 0 and args.output in ("table", "wide"):
        print("No tasks found.", file=sys.stderr)
    if remaining and args.limit is not None:
        print(
            f"{remaining} more task{'s' if remaining != 1 else ''} not shown (--limit "
            f"{args.limit})",
            file=sys.stderr,
        )
    return 0
