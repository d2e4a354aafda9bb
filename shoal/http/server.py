"""The web listener: aiohttp's server on the manager's own event loop.

``WebUi`` exists in every manager (its ``UiLogin`` Control method answers even
when nothing listens); ``start`` opens ``--http-listen`` with the routes of
``shoal.http.api`` over the Control methods it is given. Plain HTTP: the
default and ``shoal up``'s address is loopback; docs/ui.md says how to reach
it from elsewhere (an SSH tunnel, or a proxy that terminates TLS).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

import structlog
from aiohttp import web

from shoal.api.address import split_host_port
from shoal.api.transport import Method, Payload
from shoal.http.api import WebApi
from shoal.http.login import WebLogin
from shoal.http.sessions import Sessions
from shoal.security.authz import Caller

log = structlog.get_logger(__name__)


class WebUi:
    """One manager's HTTP API and web UI (see the module docstring)."""

    def __init__(self) -> None:
        self.sessions = Sessions()
        self.address: str | None = None
        self.login = WebLogin(self.sessions, lambda: self.url)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str | None:
        return f"http://{self.address}" if self.address else None

    async def start(
        self,
        listen: str,
        methods: Mapping[str, Method],
        revoked: Callable[[Caller], bool],
        denied: Callable[[str, str, Payload | None], None],
    ) -> str:
        """Listen on ``listen`` (``HOST:PORT``, port 0 for any); the bound address."""
        host, port = split_host_port(listen)
        api = WebApi(methods, self.sessions, revoked, denied)
        # handler_cancellation: a stream whose browser went away ends at once.
        runner = web.AppRunner(api.app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host or "0.0.0.0", port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"cannot listen on {listen} (--http-listen): {exc.strerror or exc}; "
                "choose another address"
            ) from exc
        self._runner = runner
        bound = runner.addresses[0]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.address = f"{shown}:{bound[1]}"
        if not _loopback(host):
            log.warning(
                "http.not_loopback",
                listen=listen,
                hint="plain HTTP: reach it through an SSH tunnel or a TLS proxy (docs/ui.md)",
            )
        return self.address

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.address = None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
