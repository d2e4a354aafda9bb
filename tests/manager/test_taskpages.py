"""``Get`` of tasks in pages (``limit`` and ``continue``), on the memory store.

The Control service's handler is called as the gRPC layer calls it, over an
informer of a memory store; tasks are written, moved and deleted between pages
the way the orchestrator, scheduler and agents would.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shoal.api.client import ControlClient
from shoal.cli import waiting
from shoal.cli.output import Progress
from shoal.errors import ApiError, ShoalError
from shoal.manager import taskpages
from shoal.manager.control import Control
from shoal.models import DesiredState, Task, TaskState, TaskStatus
from shoal.models.service import TaskTemplate
from shoal.reconciler.reports import Reports
from shoal.runtimes.registry import runtime_catalogue
from shoal.store.typed import TASKS, Change
from tests.reconciler.world import World, node, open_world, service

START = datetime(2026, 12, 2, tzinfo=UTC)
TEMPLATE = TaskTemplate(runtime="sim", command=["work"])


def task(
    number: int, service_name: str = "web", slot: int | None = None, node_id: str | None = None
) -> Task:
    return Task(
        id=f"{number:08x}{'a' * 17}",
        service=service_name,
        slot=number % 97 + 1 if slot is None else slot,
        node_id=node_id,
        template=TEMPLATE,
        # Several tasks share a creation time, as a burst of creations does.
        created_at=START + timedelta(milliseconds=number // 3),
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        await opened.put(service("web", 100), service("db", 3))
        yield opened
        MANAGERS.pop(id(opened), None)


def control(world: World) -> Control:
    return Control(
        world.informer,
        None,  # type: ignore[arg-type]
        world.events,
        Reports(),
        runtime_catalogue(),
    )


# One manager for a test's calls (a page after the first comes out of the order the
# first kept), unless a test asks for a manager of its own for every call.
MANAGERS: dict[int, Control] = {}


async def get(world: World, fresh: bool = False, **request: Any) -> dict[str, Any]:
    manager = control(world) if fresh else MANAGERS.setdefault(id(world), control(world))
    reply: dict[str, Any] = await manager.get({"kind": "tasks", **request}, None)  # type: ignore[arg-type]
    return reply


async def delete(world: World, task_id: str) -> None:
    entry = world.informer.tasks[task_id]
    await world.informer.commit([Change.delete(TASKS + task_id, entry.revision)])


async def test_every_task_comes_once_in_order_across_pages(world: World) -> None:
    await world.put(*(task(n) for n in range(250)), *(task(n, "db") for n in range(250, 260)))
    ids: list[str] = []
    token = None
    pages = 0
    while True:
        reply = await get(world, limit=40, **({"continue": token} if token else {}))
        ids += [t["id"] for t in reply["items"]]
        pages += 1
        assert reply["remaining"] == 260 - len(ids)
        token = reply.get("continue")
        if token is None:
            break
    assert pages == 7
    whole = (await get(world))["items"]  # an older client's one answer
    assert "continue" not in (await get(world))
    assert ids == [t["id"] for t in whole]
    assert len(set(ids)) == 260
    assert [t["service"] for t in whole] == ["db"] * 10 + ["web"] * 250
    assert [t["slot"] for t in whole[10:]] == sorted(t["slot"] for t in whole[10:])


@pytest.mark.parametrize(
    "fresh",
    [
        pytest.param(False, id="the-order-kept-by-the-first-page"),
        pytest.param(True, id="each-page-from-another-manager"),
    ],
)
async def test_tasks_written_and_deleted_between_pages_shift_no_other_task(
    world: World, fresh: bool
) -> None:
    """Tasks that exist from the first page to the last come exactly once; those created
    or deleted meanwhile at most once; tasks that change (assigned a node, run, end)
    keep their place. A deleted task whose id a token names does not lose the place.
    So whether a page comes out of the order the first page kept, or (another manager
    answering, or the kept order gone) from walking the tasks again."""
    rng = random.Random(8)
    await world.put(*(task(n) for n in range(300)))
    alive = set(world.informer.tasks)
    throughout = set(alive)
    created = 300
    seen: list[str] = []
    token = None
    while True:
        reply = await get(world, fresh, limit=25, **({"continue": token} if token else {}))
        seen += [t["id"] for t in reply["items"]]
        token = reply.get("continue")
        if token is None:
            break
        # Between pages: the page's last task goes (the token names it), a few more go,
        # some are born, and some move on as the scheduler and agents move them.
        doomed = {reply["items"][-1]["id"], *rng.sample(sorted(alive), 4)}
        for task_id in doomed:
            await delete(world, task_id)
        alive -= doomed
        throughout -= doomed
        born = [task(n) for n in range(created, created + 6)]
        created += 6
        await world.put(*born)
        alive |= {t.id for t in born}
        for task_id in rng.sample(sorted(alive), 5):
            entry = world.informer.tasks[task_id]
            moved = entry.obj.model_copy(
                update={"node_id": "n1", "status": TaskStatus(state=TaskState.RUNNING)}
            )
            await world.informer.commit([Change.put(moved, entry.revision)])
    assert len(seen) == len(set(seen)), "a task came twice"
    assert throughout <= set(seen), "a task that was there all along was skipped"


async def test_filters_apply_to_every_page(world: World) -> None:
    ended = task(1).model_copy(
        update={"desired_state": DesiredState.SHUTDOWN, "status": TaskStatus(state="complete")}
    )
    await world.put(ended, *(task(n) for n in range(2, 60)))
    await world.put(*(task(n, "db") for n in range(60, 70)))

    async def listing(**request: Any) -> list[str]:
        ids, token = [], None
        while True:
            reply = await get(world, limit=7, **request, **({"continue": token} if token else {}))
            ids += [t["id"] for t in reply["items"]]
            if (token := reply.get("continue")) is None:
                return ids

    assert len(await listing()) == 68  # the ended one is history
    assert len(await listing(all=True)) == 69
    db = await listing(service="db")
    assert db == [t["id"] for t in (await get(world, service="db"))["items"]]
    assert len(db) == 10


async def test_global_tasks_are_listed_by_node_within_their_slot(world: World) -> None:
    await world.put(service("agent", mode="global"), node("n1"), node("n2"), node("n3"))
    # Global tasks carry their node from birth: it orders them, before their age.
    await world.put(
        task(1, "agent", slot=0, node_id="n3"),
        task(2, "agent", slot=0, node_id="n1"),
        task(3, "agent", slot=0, node_id="n2"),
    )
    first = await get(world, service="agent", limit=2)
    rest = await get(world, service="agent", limit=2, **{"continue": first["continue"]})
    assert [t["nodeId"] for t in first["items"] + rest["items"]] == ["n1", "n2", "n3"]
    assert "continue" not in rest and rest["remaining"] == 0


async def test_a_page_is_at_most_page_max_whatever_the_limit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskpages, "PAGE_MAX", 10)
    await world.put(*(task(n) for n in range(25)))
    reply = await get(world, limit=1000)
    assert len(reply["items"]) == 10
    assert reply["remaining"] == 15 and reply["continue"]


async def test_an_older_client_without_limit_is_answered_or_told_to_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(taskpages, "UNPAGED_TASKS", 20)
    await world.put(*(task(n) for n in range(20)))
    reply = await get(world)
    assert len(reply["items"]) == 20
    assert set(reply) == {"items", "revision"}  # the answer's shape as it was
    await world.put(task(20))
    with pytest.raises(ValueError, match=r"^limit: 21 tasks match.*'limit' and 'continue'"):
        await get(world)
    assert len((await get(world, service="db"))["items"]) == 0  # a narrower listing still is


def _crafted(created: str) -> str:
    """A token as a client could craft it, with ``created`` as the JSON text of its time."""
    text = f'["{taskpages._KIND}","web",1,"",{created},"x",""]'
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        pytest.param({"limit": 0}, "limit", id="limit-zero"),
        pytest.param({"limit": -3}, "limit", id="limit-negative"),
        pytest.param({"limit": True}, "limit", id="limit-bool"),
        pytest.param({"limit": "10"}, "limit", id="limit-text"),
        pytest.param({"limit": 5, "continue": "not a token"}, "continue", id="garbage"),
        pytest.param({"limit": 5, "continue": 7}, "continue", id="not-text"),
        pytest.param({"limit": 5, "continue": "WyJ0YXNrcyJd"}, "continue", id="short"),
        pytest.param(
            {"limit": 5, "continue": taskpages.encode_token(("web", 1, "", 0.0, "x"))[:-2] + "!!"},
            "continue",
            id="mangled",
        ),
        pytest.param({"limit": 5, "continue": _crafted("1" + "0" * 3000)}, "continue", id="huge"),
        pytest.param({"limit": 5, "continue": _crafted("NaN")}, "continue", id="nan"),
        pytest.param({"limit": 5, "continue": _crafted("1e999")}, "continue", id="infinite"),
        pytest.param(
            {"limit": 5, "continue": base64.urlsafe_b64encode(b"[" * 2900).decode()},
            "continue",
            id="deep",
        ),
        pytest.param({"service": ["web"]}, "service", id="service-list"),
    ],
)
async def test_a_bad_limit_or_token_names_its_field(
    world: World, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        await get(world, **request_fields)


def test_a_token_names_the_order_it_was_made_from() -> None:
    order = ("web", 3, "", START.timestamp() + 0.123456, "abc")
    cursor = taskpages.decode_token(taskpages.encode_token(order, "l1"))
    assert cursor == taskpages.Cursor(order, "l1")
    assert taskpages.decode_token(None) is None
    assert taskpages.decode_token("") is None


async def test_nodes_come_with_their_live_task_counts(world: World) -> None:
    await world.put(node("n1"), node("n2"))
    ended = task(3, node_id="n1").model_copy(update={"status": TaskStatus(state="failed")})
    await world.put(task(1, node_id="n1"), task(2, node_id="n1"), ended, task(4))
    reply = await control(world).get({"kind": "nodes"}, None)  # type: ignore[arg-type]
    assert reply["taskCounts"] == {"n1": 2, "n2": 0}


class InProcess:
    """A ``ControlClient`` transport that calls the handlers directly."""

    def __init__(self, world: World) -> None:
        self._control = control(world)

    async def call(self, method: str, request: dict[str, Any], timeout: float | None) -> Any:
        assert method == "Get"
        try:
            return await self._control.get(request, None)  # type: ignore[arg-type]
        except ValueError as exc:  # what the gRPC layer answers for it
            raise ApiError("INVALID_ARGUMENT", str(exc)) from exc

    def stream(self, method: str, request: dict[str, Any]) -> Any:
        raise NotImplementedError


async def test_delete_waits_on_a_huge_service_a_page_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`delete --wait` polls a deleted service's tasks until none is left stopping; one
    that has more tasks than one unpaged answer holds is read a page per poll."""
    monkeypatch.setattr(taskpages, "UNPAGED_TASKS", 1500)
    monkeypatch.setattr(waiting, "POLL_INTERVAL", 0.01)
    stopping = [
        task(n).model_copy(update={"desired_state": DesiredState.SHUTDOWN}) for n in range(2500)
    ]
    await world.put(*stopping)
    client = ControlClient(InProcess(world), "in-process")
    with pytest.raises(ShoalError, match=r"web: 2500 task\(s\)"):
        await waiting.wait_tasks_gone(client, ["web"], 0.05, Progress(io.StringIO()))
    for stopped in stopping:
        entry = world.informer.tasks[stopped.id]
        ended = entry.obj.model_copy(update={"status": TaskStatus(state=TaskState.SHUTDOWN)})
        await world.informer.commit([Change.put(ended, entry.revision)])
    await waiting.wait_tasks_gone(client, ["web"], 5, Progress(io.StringIO()))


async def test_a_listing_kept_for_other_filters_is_not_used(world: World) -> None:
    """A token is for the listing it came from: sent with other filters (another
    service), the page is walked again and holds only what those filters match."""
    await world.put(*(task(n) for n in range(30)), *(task(n, "db") for n in range(30, 40)))
    first = await get(world, limit=5)
    other = await get(world, limit=100, service="web", **{"continue": first["continue"]})
    assert {t["service"] for t in first["items"]} == {"db"}  # db sorts first
    assert {t["service"] for t in other["items"]} == {"web"}
    assert len(other["items"]) == 30  # every web task is after the first page's db tasks


async def test_kept_orders_expire_and_are_bounded() -> None:
    now = [0.0]
    listings = taskpages.TaskListings(keep=2, ttl=10.0, clock=lambda: now[0])
    tasks = [task(n) for n in range(10)]
    by_id = {t.id: t for t in tasks}

    def first() -> str:
        token: str = listings.page(tasks, by_id.get, lambda t: True, "f", 3, None)["continue"]
        return token

    tokens = [first(), first(), first()]
    cursors = [taskpages.decode_token(t) for t in tokens]
    assert [c is not None and c.listing in listings._kept for c in cursors] == [False, True, True]
    now[0] = 11.0
    again = listings.page([], by_id.get, lambda t: True, "f", 3, cursors[2])
    assert again["tasks"] == []  # expired: walked again, over no tasks at all
