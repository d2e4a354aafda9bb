"""How a verb reaches a manager: unary calls on the CLI's own client, the rest on grpc.aio.

A verb's work is a coroutine of one ``ControlClient``. Work made only of unary
calls runs with ``unary``, on the CLI's blocking HTTP/2 client
(``shoal.api.unary``): neither grpc nor asyncio is imported, which is most of
what a command would otherwise spend before its first byte goes out. Work that
streams (``logs``, ``events -w``, ``exec``), sleeps or polls (``--wait``) runs
with ``on_loop``, on grpc.aio in ``asyncio.run``. Both pick the manager and the
credentials from ``--server`` and ``--context`` the same way
(``shoal.api.client``).

This module imports nothing when it is loaded: verb modules import it at their top.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: see shoal.cli.main
if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable
    from typing import Any, TypeVar

    from shoal.api.client import ControlClient

    T = TypeVar("T")


def unary(args: argparse.Namespace, work: Callable[[ControlClient], Awaitable[T]]) -> T:
    """``work``'s unary calls on the CLI's own client: neither grpc nor asyncio loaded."""
    from shoal.api.client import run_unary

    return run_unary(getattr(args, "server", None), getattr(args, "context", None), work)


def on_loop(args: argparse.Namespace, work: Callable[[ControlClient], Awaitable[T]]) -> T:
    """``work`` on grpc.aio in an event loop: for streams, sleeps and waits."""
    import asyncio

    from shoal.api.client import open_control

    async def session() -> T:
        server, context = getattr(args, "server", None), getattr(args, "context", None)
        async with open_control(server, context) as control:
            return await work(control)

    return asyncio.run(session())


def call(args: argparse.Namespace, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """One unary Control method by name (``UserAdd``, ``UiLogin``, …), its answer."""
    return unary(args, lambda control: control.call(method, request))
