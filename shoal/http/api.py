"""The HTTP API's routes: each one a Control API call, with the caller's session.

Every API request needs a session: its cookie and its page token
(``X-Shoal-CSRF``, or ``?csrf=`` for an ``EventSource``; ``shoal.http.sessions``
says why both). Actions (``POST``) also need a role that may call the Control
method behind them (``shoal.security.authz.check_role``: a viewer is refused
with 403, audited and recorded as an event, just as over gRPC). Streams are server-sent events: the
events stream starts with recent history and then follows, each event with
its cursor as the SSE id, so a browser's ``EventSource`` resumes after a drop
where it stopped (``Last-Event-ID``); a service's logs follow the service.

``ROUTES`` is the one list of routes: ``WebApi.app()`` registers them and
``/api/v1/openapi.json`` documents them (``shoal.http.schema.openapi``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel

from shoal.api.transport import Method, Payload, ServerStream, Unary
from shoal.errors import AuthError, ShoalError
from shoal.http import schema
from shoal.http.calls import CallContext, error_body
from shoal.http.sessions import COOKIE, CSRF_HEADER, Session, Sessions, SignInError
from shoal.logtimes import format_time, parse_since
from shoal.security.authz import Caller, acting_as, check_role, is_read

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
# How many past events an events stream starts with (``?limit=`` changes it).
HISTORY = 200
# Tasks per Get while listing them (a manager's largest page: shoal.manager.taskpages).
TASK_PAGE = 5_000
# A comment line this often keeps proxies from closing a quiet stream.
PING = 15.0
# An open stream checks this often that its session goes on (not signed out, its
# user not removed); it also ends at the session's expiry.
SESSION_CHECK = 1.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

LOGIN_FAILED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoal: not signed in</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>Not signed in</h1><p>{reason}</p>
<p>Run <code>shoal ui</code> for a new link: each one works once, for two minutes.</p>
</main></body></html>
"""

# What opening a login link answers: nothing is used up until the button is pressed
# (a link previewer that fetches the URL signs nobody in).
SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoal: sign in</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>Sign in to shoal</h1>
<p>This link signs this browser in as <strong>{who}</strong>. It works once, until {until}.</p>
<form method="post" action="/login"><input type="hidden" name="token" value="{token}">
<button type="submit" id="sign-in">Sign in as {who}</button></form>
<p class="muted">Not your link, or not what you asked for? Close this page.</p>
</main></body></html>
"""

# What the posted form answers: signin.js keeps the page token and goes on to the UI.
SIGNED_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoal: signing in</title>
<meta name="shoal-page-token" content="{token}">
<link rel="stylesheet" href="/static/style.css"></head>
<body><main><p>Signing in…</p></main>
<script type="module" src="/static/signin.js"></script></body></html>
"""

Handler = Callable[["WebApi", web.Request], Awaitable[web.StreamResponse]]


def page_token(request: web.Request) -> str | None:
    """The session's page token: the header, or ``csrf`` in the query (EventSource)."""
    return request.headers.get(CSRF_HEADER) or request.query.get("csrf")


def _route(doc: schema.RouteDoc) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append((doc, handler))
        return handler

    return register


ROUTES: list[tuple[schema.RouteDoc, Handler]] = []


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "")
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise ValueError(f"{name}: expected true or false (got {value!r})")


def _number(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise ValueError(f"{name}: must be a whole number >= 0 (got {value!r})")
    return int(value)


def _json(model: BaseModel | Payload) -> web.Response:
    data = model.model_dump(mode="json", by_alias=True) if isinstance(model, BaseModel) else model
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _sse(payload: Payload, event_id: int | None = None, event: str | None = None) -> bytes:
    lines = []
    if event:
        lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + orjson.dumps(payload).decode())
    return ("\n".join(lines) + "\n\n").encode()


class WebApi:
    """The routes over one manager's Control methods (audited, admitted, routed)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        sessions: Sessions,
        revoked: Callable[[Caller], bool],
        denied: Callable[[str, str, Payload | None], None],
    ) -> None:
        self.methods = methods
        self.sessions = sessions
        self.revoked = revoked
        self.denied = denied

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=1024 * 1024)
        for doc, handler in ROUTES:
            app.router.add_route(doc.method, doc.path, self._bind(handler))
        app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
        return app

    def _bind(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def bound(request: web.Request) -> web.StreamResponse:
            return await handler(self, request)

        return bound

    @web.middleware
    async def _errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            status, body = exc.status, {"error": {"code": exc.reason, "message": exc.text}}
            response = web.json_response(body, status=status)
        except (ShoalError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            status, body = error_body(exc)
            response = web.json_response(body, status=status)
        except Exception as exc:  # never a traceback to the client: it is logged
            log.exception("http.handler_failed", path=request.path)
            status, body = error_body(exc)
            response = web.json_response(body, status=status)
        if not response.prepared:
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    # --------------------------------------------------------- sessions

    def session(self, request: web.Request) -> Session:
        """The caller's session: its cookie, and for a read its page token too (a cookie
        another server on this host received reads nothing; actions check the token in
        ``_authorize``, which audits a refusal)."""
        session = self.sessions.open(request.cookies.get(COOKIE))
        self.still_open(session)
        if request.method == "GET":
            try:
                self.sessions.check_csrf(session, page_token(request))
            except AuthError as exc:  # 401: the page shows how to sign in
                raise SignInError(f"{exc}; a page signed in by a `shoal ui` link has it") from exc
        return session

    def still_open(self, session: Session) -> None:
        """``SignInError`` once ``session`` has ended: it expired (its time, or its user's
        certificate's), was signed out, or its user was removed."""
        self.sessions.check(session)
        if self.revoked(session.caller):
            raise SignInError(f"user {session.caller.name} was removed: its sessions are refused")

    def _authorize(
        self, request: web.Request, session: Session, method: str, body: Payload
    ) -> None:
        """The role rule of the Control API; and for what writes, the CSRF header."""
        try:
            check_role(session.caller, method)
            if not is_read(method):
                self.sessions.check_csrf(session, page_token(request))
        except AuthError as exc:
            if not is_read(method):
                self.denied(method, str(exc), body)
            raise

    async def call(self, request: web.Request, method: str, body: Payload) -> Payload:
        session = self.session(request)
        handler = self.methods[method]
        assert isinstance(handler, Unary)
        with acting_as(session.caller):
            self._authorize(request, session, method, body)
            # Shielded: a browser that goes away mid-call (handler cancellation is on, for
            # the streams) must not cut an action between its commit and its audit record.
            call = handler.handler(body, CallContext(str(request.remote)))
            return await asyncio.shield(call)

    async def stream(
        self,
        request: web.Request,
        session: Session,
        items: Callable[[], AsyncIterator[tuple[Payload, int | None]]],
    ) -> web.StreamResponse:
        """Send ``items()`` (payload, SSE id) as server-sent events until the client goes,
        or until ``session`` ends (then an ``event: failure`` saying why)."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
                **SECURITY_HEADERS,
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")

        async def ping() -> None:
            while True:
                await asyncio.sleep(PING)
                await response.write(b": ping\n\n")

        async def fail(exc: Exception) -> None:
            _, body = error_body(exc)
            with contextlib.suppress(ConnectionError):
                await response.write(_sse(body, event="failure"))

        async def send() -> None:
            try:
                async for payload, event_id in items():
                    await response.write(_sse(payload, event_id))
            except (ShoalError, ValueError) as exc:
                await fail(exc)
            except ConnectionError:
                pass  # the client went away

        async def guard() -> SignInError:
            while True:
                left = (session.expires_at - datetime.now(UTC)).total_seconds()
                await asyncio.sleep(max(0.0, min(left, SESSION_CHECK)))
                try:
                    self.still_open(session)
                except SignInError as exc:
                    return exc

        workers = [asyncio.create_task(job) for job in (ping(), send(), guard())]
        try:
            _, sender, guarding = workers
            await asyncio.wait((sender, guarding), return_when=asyncio.FIRST_COMPLETED)
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                ended = guarding.result()
                assert isinstance(ended, SignInError)
                await fail(ended)
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await worker
        return response

    def control_stream(
        self, request: web.Request, session: Session, method: str, body: Payload
    ) -> AsyncIterator[Payload]:
        handler = self.methods[method]
        assert isinstance(handler, ServerStream)
        self._authorize(request, session, method, body)
        return handler.handler(body, CallContext(str(request.remote)))


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    if request.content_type != "application/json":
        raise ValueError("request: send a JSON object with Content-Type: application/json")
    try:
        raw = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"request: not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError("request: must be a JSON object")
    return model.model_validate(raw)


# ------------------------------------------------------------------ pages


@_route(schema.RouteDoc("GET", "/", "the web UI", None, None, public=True))
async def index(api: WebApi, request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


def _page(
    template: str, status: int = 200, headers: Mapping[str, str] | None = None, **values: str
) -> web.Response:
    escaped = {name: html.escape(value) for name, value in values.items()}
    return web.Response(
        status=status,
        content_type="text/html",
        text=template.format(**escaped),
        headers={"Cache-Control": "no-store", **SECURITY_HEADERS, **(headers or {})},
    )


@_route(
    schema.RouteDoc(
        "GET",
        "/login",
        "open a login link from `shoal ui`: a page with a Sign in button that posts the "
        "token; the link is not used up",
        None,
        None,
        query=(("token", "string", "the single-use token of the link"),),
        public=True,
    )
)
async def login_page(api: WebApi, request: web.Request) -> web.StreamResponse:
    token = request.query.get("token", "")
    try:
        caller, expires = api.sessions.peek(token)
    except SignInError as exc:  # a person opened this link: answer with a page
        return _page(LOGIN_FAILED, 401, reason=str(exc))
    who = f"{caller.name} ({caller.role})"
    until = expires.isoformat(timespec="seconds")
    # With no-referrer, browsers send the form's POST with Origin: null, which the sign-in
    # refuses (same_origin): same-origin keeps the origin, and still tells nobody else.
    policy = {"Referrer-Policy": "same-origin"}
    return _page(SIGN_IN, headers=policy, who=who, until=until, token=token)


@_route(
    schema.RouteDoc(
        "POST",
        "/login",
        "sign in: the login page's form (token=...), posted from this listener's own origin; "
        "uses the link up, sets the session cookie, and the page it answers with hands the "
        "UI the page token",
        None,
        None,
        form=(("token", "string", "the single-use token of the link"),),
        public=True,
    )
)
async def login(api: WebApi, request: web.Request) -> web.StreamResponse:
    try:
        same_origin(request)
    except AuthError as exc:
        return _page(LOGIN_FAILED, 403, reason=str(exc))
    form = await request.post()
    token = form.get("token")
    try:
        session = api.sessions.redeem(token if isinstance(token, str) else "")
    except SignInError as exc:
        return _page(LOGIN_FAILED, 401, reason=str(exc))
    # A page, not a redirect: it hands the page token to the UI (sessions.py says why).
    response = _page(SIGNED_IN, token=api.sessions.csrf_token(session))
    response.set_cookie(
        COOKIE,
        api.sessions.cookie(session),
        max_age=int(api.sessions.session_ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
    )
    log.info("http.signed_in", user=session.caller.name, role=session.caller.role)
    return response


def same_origin(request: web.Request) -> None:
    """``AuthError`` unless the browser says the request comes from this listener's own
    page (login CSRF: a page elsewhere posting its owner's link would sign the visitor
    in to the owner's session). Browsers send ``Origin`` on every ``POST``; an origin
    includes the port, so another server on this host is "elsewhere" too."""
    origin = request.headers.get("Origin", "")
    fetch_site = request.headers.get("Sec-Fetch-Site", "same-origin")
    host = urllib.parse.urlsplit(origin).netloc if "://" in origin else ""
    if not host or host.lower() != request.host.lower() or fetch_site != "same-origin":
        raise AuthError(
            f"this sign-in came from another page ({origin or 'no Origin header'}), not from "
            "the one the link opens: refused. Sign in from the page the link opens."
        )


@_route(schema.RouteDoc("GET", "/api/v1/openapi.json", "this document", None, None, public=True))
async def openapi_document(api: WebApi, request: web.Request) -> web.StreamResponse:
    return _json(schema.openapi([doc for doc, _ in ROUTES]))


@_route(schema.RouteDoc("GET", "/api/v1/session", "who is signed in", None, schema.SessionView))
async def session_view(api: WebApi, request: web.Request) -> web.StreamResponse:
    session = api.session(request)
    try:
        check_role(session.caller, "Scale")
        actions = True
    except AuthError:
        actions = False
    return _json(
        schema.SessionView(
            user=session.caller.name,
            role=session.caller.role,
            csrf=api.sessions.csrf_token(session),
            expires_at=session.expires_at.isoformat(),
            actions=actions,
        )
    )


@_route(schema.RouteDoc("POST", "/api/v1/logout", "sign out", None, schema.SignedOut))
async def logout(api: WebApi, request: web.Request) -> web.StreamResponse:
    session = api.session(request)
    api.sessions.check_csrf(session, page_token(request))
    api.sessions.end(session)
    response = _json(schema.SignedOut(signed_out=True))
    response.del_cookie(COOKIE, path="/")
    return response


# ------------------------------------------------------------------ reads


@_route(
    schema.RouteDoc(
        "GET",
        "/api/v1/services",
        "every service, with desired and running tasks and its rollout",
        "Get",
        schema.ServiceList,
    )
)
async def services(api: WebApi, request: web.Request) -> web.StreamResponse:
    return _json(await api.call(request, "Get", {"kind": "services"}))


@_route(
    schema.RouteDoc(
        "GET",
        "/api/v1/services/{name}",
        "one service: its tasks, notes and recent events",
        "Describe",
        schema.ServiceDetail,
    )
)
async def service(api: WebApi, request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    return _json(await api.call(request, "Describe", {"kind": "services", "name": name}))


@_route(
    schema.RouteDoc(
        "GET",
        "/api/v1/tasks",
        "the tasks that run or should (all=true: their history too)",
        "Get",
        schema.TaskList,
        query=(
            ("service", "string", "only this service's tasks"),
            ("all", "boolean", "with ended tasks"),
        ),
    )
)
async def tasks(api: WebApi, request: web.Request) -> web.StreamResponse:
    body: Payload = {"kind": "tasks", "all": _flag(request, "all")}
    if request.query.get("service"):
        body["service"] = request.query["service"]
    # Read in pages (a Get answers at most 10,000 tasks unpaged: shoal.manager.taskpages),
    # which also lets other work run between pages of a huge service.
    items: list[Payload] = []
    while True:
        reply = await api.call(request, "Get", {**body, "limit": TASK_PAGE})
        items += reply.get("items", [])
        if not reply.get("continue"):
            return _json({"items": items, "revision": reply.get("revision")})
        body["continue"] = reply["continue"]


@_route(schema.RouteDoc("GET", "/api/v1/nodes", "every node", "Get", schema.NodeList))
async def nodes(api: WebApi, request: web.Request) -> web.StreamResponse:
    return _json(await api.call(request, "Get", {"kind": "nodes"}))


def _event_filters(request: web.Request) -> Payload:
    filters: Payload = {}
    for name in ("service", "node", "type", "object"):
        if request.query.get(name):
            filters[name] = request.query[name]
    return filters


@_route(
    schema.RouteDoc(
        "GET",
        "/api/v1/events",
        "recent events, then each new one as it happens (server-sent events; the "
        "cursor is the SSE id, Last-Event-ID resumes after it)",
        "WatchEvents",
        schema.EventView,
        stream=True,
        query=(
            ("service", "string", "only events of this service (and its tasks)"),
            ("node", "string", "only events of this node"),
            ("type", "string", "Normal or Warning"),
            ("limit", "integer", f"how many past events to start with (default {HISTORY})"),
        ),
    )
)
async def events(api: WebApi, request: web.Request) -> web.StreamResponse:
    session = api.session(request)
    filters = _event_filters(request)
    resume = request.headers.get("Last-Event-ID", "")
    with acting_as(session.caller):
        if resume.isdigit():
            history: list[Payload] = []
            # Events of one transaction share a cursor: resend the last one's rather
            # than lose those of them the browser had not received yet.
            cursor = max(0, int(resume) - 1)
        else:
            limit = _number(request, "limit", HISTORY)
            # The list call checks the filters before the stream starts: a bad one is a 400.
            listed = await api.call(request, "Events", {**filters, "limit": limit or 1})
            history = list(listed["events"]) if limit else []
            cursor = int(listed["cursor"])
        watch = api.control_stream(request, session, "WatchEvents", {**filters, "cursor": cursor})

        async def items() -> AsyncIterator[tuple[Payload, int | None]]:
            for event in history:
                yield event, int(event["cursor"])
            async for item in watch:
                event = item["event"]
                yield event, int(event["cursor"])

        return await api.stream(request, session, items)


@_route(
    schema.RouteDoc(
        "GET",
        "/api/v1/services/{name}/logs",
        "a service's output, followed: tasks that start later join (server-sent events)",
        "Logs",
        schema.LogLine,
        stream=True,
        query=(
            ("tail", "integer", "the last N lines of each task to start with"),
            ("since", "string", "only lines written since: a duration like 10m, or RFC 3339"),
            ("timestamps", "boolean", "each line with its time (time: RFC 3339)"),
        ),
    )
)
async def logs(api: WebApi, request: web.Request) -> web.StreamResponse:
    session = api.session(request)
    name = request.match_info["name"]
    tail = _number(request, "tail", 200)
    timestamps = _flag(request, "timestamps")
    call: Payload = {"service": name, "follow": True, "tail": tail}
    if "since" in request.query:
        try:  # checked here: once the stream has started, an error is no longer a 400
            since = parse_since(request.query["since"])
        except ValueError as exc:
            raise ValueError(f"since: {exc}") from None
        call["since"] = format_time(since)
    with acting_as(session.caller):
        # A service that does not exist is a 404 before the stream starts.
        await api.call(request, "Get", {"kind": "services", "name": name})
        lines = api.control_stream(request, session, "Logs", call)

        async def items() -> AsyncIterator[tuple[Payload, int | None]]:
            async for line in lines:
                if not timestamps:
                    line = {k: v for k, v in line.items() if k != "time"}
                yield line, None

        return await api.stream(request, session, items)


# ---------------------------------------------------------------- actions


ActionCall = Callable[[str, Any], Payload]


def _action(
    path: str,
    summary: str,
    control: str,
    reply: type[BaseModel],
    body: type[BaseModel],
) -> Callable[[ActionCall], ActionCall]:
    """A ``POST`` route on one named object: its JSON body (a ``body``) checked, then
    the Control request the decorated function makes of (name, body) sent."""

    def register(build: ActionCall) -> ActionCall:
        async def handler(api: WebApi, request: web.Request) -> web.StreamResponse:
            parsed = await _body(request, body)
            call = build(request.match_info["name"], parsed)
            return _json(await api.call(request, control, call))

        ROUTES.append((schema.RouteDoc("POST", path, summary, control, reply, body=body), handler))
        return build

    return register


@_action(
    "/api/v1/services/{name}/scale",
    "set a replicated service's replicas",
    "Scale",
    schema.ScaleReply,
    schema.ScaleRequest,
)
def scale(name: str, body: schema.ScaleRequest) -> Payload:
    return {"replicas": {name: body.replicas}}


@_action(
    "/api/v1/services/{name}/rollout",
    "restart every slot, undo the last rollout (or to a revision), pause, resume, promote canaries",
    "Rollout",
    schema.RolloutReply,
    schema.RolloutRequest,
)
def rollout(name: str, body: schema.RolloutRequest) -> Payload:
    call: Payload = {"name": name, "action": body.action}
    if body.to_revision is not None:
        call["toRevision"] = body.to_revision
    return call


@_action(
    "/api/v1/nodes/{name}/availability",
    "drain a node (its tasks move), pause it (it takes no new ones) or make it active",
    "UpdateNode",
    schema.NodeReply,
    schema.AvailabilityRequest,
)
def availability(name: str, body: schema.AvailabilityRequest) -> Payload:
    return {"name": name, "availability": body.availability.value}
