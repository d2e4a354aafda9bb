"""``UiLogin``: the Control method behind ``shoal ui``.

Any user may call it, for itself only (``SELF_METHODS`` in
``shoal.security.authz``; audited like a write): the answer is a single-use
link to this manager's web listener that signs the browser in as the caller,
with the caller's role (``shoal.http.sessions``). A manager without
``--http-listen`` answers ``FAILED_PRECONDITION`` saying how to turn it on.

    UiLogin  {}  ->  {url, expiresAt, user, role}
"""

from __future__ import annotations

from collections.abc import Callable

import grpc.aio

from shoal.api.transport import Method, Payload, Unary
from shoal.errors import AuthError, ShoalError
from shoal.http.sessions import Sessions
from shoal.security.authz import Caller, current_caller


class WebLogin:
    """Mints login links for the web listener whose URL ``url()`` gives (None: none)."""

    def __init__(self, sessions: Sessions, url: Callable[[], str | None]) -> None:
        self.sessions = sessions
        self.url = url

    def methods(self) -> dict[str, Method]:
        return {"UiLogin": Unary(self.login)}

    async def login(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        caller = current_caller()
        if caller is None or caller.kind != "user":
            raise AuthError("UiLogin: only a user signs in to the web UI")
        base = self.url()
        if base is None:
            raise ShoalError(
                "this manager serves no web UI: start it with --http-listen HOST:PORT "
                "(`shoal up` serves one on loopback unless --http-listen off)"
            )
        # The session is the user's own, whoever forwarded the call.
        token, expires = self.sessions.new_link(
            Caller(caller.name, caller.role, caller.issued_at, not_after=caller.not_after)
        )
        return {
            "url": f"{base}/login?token={token}",
            "expiresAt": expires.isoformat(),
            "user": caller.name,
            "role": caller.role,
        }
