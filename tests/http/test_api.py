"""The HTTP API against a real manager: sign-in, reads, actions, roles, errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from shoal.errors import ApiError
from shoal.http.sessions import COOKIE, CSRF_HEADER
from shoal.logtimes import format_time, parse_time
from shoal.security.ca import read_cert
from tests.http.conftest import NODE, Browser, Web, login_form_token, page_token


def audit(web: Web) -> list[dict[str, Any]]:
    lines = (web.manager.settings.state_dir / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def status_with_cookie(web: Web, cookie: str) -> int:
    """What a client that sends only this session cookie gets for the services."""
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    url = f"{web.url}/api/v1/services"
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers) as response:
        return response.status


async def test_a_login_link_signs_in_once_and_only_when_its_form_is_posted(web: Web) -> None:
    link = await web.control("UiLogin", {})
    assert link["user"] == "admin" and link["role"] == "admin"
    assert link["url"].startswith(f"{web.url}/login?token=")
    token = link["url"].split("token=", 1)[1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        # Opening the link (as a chat's link previewer does, twice) signs nobody in and
        # does not use it up: it answers a page with a Sign in button.
        for _ in range(2):
            async with client.get(link["url"], allow_redirects=False) as response:
                assert response.status == 200
                assert COOKIE not in response.cookies
                page = await response.text()
                assert login_form_token(page) == token
                assert '<form method="post" action="/login">' in page
                assert "admin (admin)" in page  # whom the button signs in
        async with client.get(f"{web.url}/api/v1/session") as response:
            assert response.status == 401
        # The button: the form posted from the listener's own page.
        async with client.post(
            f"{web.url}/login", data={"token": token}, headers={"Origin": web.url}
        ) as response:
            assert response.status == 200
            cookie = response.cookies[COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
            csrf = page_token(await response.text())
        async with client.get(f"{web.url}/api/v1/session") as response:
            # The cookie alone, as any other server on this host could get it: refused.
            assert response.status == 401
            assert "X-Shoal-CSRF" in (await response.json())["error"]["message"]
        async with client.get(f"{web.url}/api/v1/events?csrf=wrong") as response:
            assert response.status == 401
        async with client.get(f"{web.url}/api/v1/session", headers={CSRF_HEADER: csrf}) as response:
            assert response.status == 200
            session = await response.json()
            assert (session["user"], session["role"], session["actions"]) == (
                "admin",
                "admin",
                True,
            )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        for method in ("GET", "POST"):  # used now: the page says so, and signs nobody in
            async with client.request(
                method, link["url"], data={"token": token}, headers={"Origin": web.url}
            ) as response:
                assert response.status == 401, method
                assert "used already" in await response.text()
                assert COOKIE not in response.cookies
        async with client.get(f"{web.url}/api/v1/services") as response:
            assert response.status == 401
            body = await response.json()
            assert body["error"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": "http://evil.example"}, id="other-site"),
        pytest.param({"Origin": "http://127.0.0.1:1"}, id="other-port"),
        pytest.param({"Origin": "null"}, id="opaque-origin"),
        pytest.param({}, id="no-origin"),
        pytest.param({"Origin": "SELF", "Sec-Fetch-Site": "cross-site"}, id="fetch-cross-site"),
    ],
)
async def test_a_login_form_posted_from_elsewhere_signs_nobody_in(
    web: Web, headers: dict[str, str]
) -> None:
    """Login CSRF: another page must not post its owner's link and so sign the victim's
    browser in to the attacker's session. The refusal does not use the link up."""
    link = await web.control("UiLogin", {})
    token = link["url"].split("token=", 1)[1]
    sent = {k: web.url if v == "SELF" else v for k, v in headers.items()}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.post(f"{web.url}/login", data={"token": token}, headers=sent) as response:
            assert response.status == 403
            assert COOKIE not in response.cookies
            assert "Sign in from the page" in await response.text()
        async with client.post(
            f"{web.url}/login", data={"token": token}, headers={"Origin": web.url}
        ) as response:
            assert response.status == 200 and COOKIE in response.cookies


async def test_a_forged_or_altered_cookie_is_refused(web: Web, admin: Browser) -> None:
    cookie = next(c for c in admin.client.cookie_jar if c.key == COOKIE)
    body, _, signature = cookie.value.partition(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + signature
    assert await status_with_cookie(web, forged) == 401


async def test_reads_are_what_the_control_api_answers(web: Web, admin: Browser) -> None:
    await web.apply("api", 2)
    await web.running("api", 2)
    status, services = await admin.get("/api/v1/services")
    assert status == 200
    [service] = services["items"]
    assert service["metadata"]["name"] == "api"
    assert (service["status"]["desiredTasks"], service["status"]["runningTasks"]) == (2, 2)
    status, tasks = await admin.get("/api/v1/tasks?service=api")
    assert status == 200
    assert sorted(t["slot"] for t in tasks["items"]) == [1, 2]
    assert all(t["name"].startswith("api.") for t in tasks["items"])
    status, nodes = await admin.get("/api/v1/nodes")
    assert [n["id"] for n in nodes["items"]] == [NODE]
    status, detail = await admin.get("/api/v1/services/api")
    assert status == 200 and len(detail["tasks"]) == 2


async def test_an_admin_scales_restarts_and_drains_and_each_is_audited(
    web: Web, admin: Browser
) -> None:
    await web.apply("api", 1)
    await web.running("api", 1)
    status, reply = await admin.post("/api/v1/services/api/scale", {"replicas": 3})
    assert (status, reply) == (200, {"scaled": {"api": 3}})
    await web.running("api", 3)
    status, reply = await admin.post("/api/v1/services/api/rollout", {"action": "restart"})
    assert status == 200 and reply["state"] == "updating"
    status, reply = await admin.post(
        f"/api/v1/nodes/{NODE}/availability", {"availability": "drain"}
    )
    assert status == 200 and reply["node"]["spec"]["availability"] == "drain"
    nodes = await web.control("Get", {"kind": "nodes"})
    assert nodes["items"][0]["spec"]["availability"] == "drain"
    status, reply = await admin.post(
        f"/api/v1/nodes/{NODE}/availability", {"availability": "active"}
    )
    assert status == 200 and reply["node"]["spec"]["availability"] == "active"
    records = [(r["user"], r["method"], r["outcome"]) for r in audit(web)]
    assert ("admin", "UiLogin", "OK") in records
    for method in ("Scale", "Rollout", "UpdateNode"):
        assert ("admin", method, "OK") in records


async def test_a_viewer_reads_and_is_refused_every_action(web: Web) -> None:
    await web.apply("api", 1)
    viewer = await web.browser(await web.viewer())
    try:
        status, session = await viewer.get("/api/v1/session")
        assert (session["role"], session["actions"]) == ("viewer", False)
        status, _ = await viewer.get("/api/v1/services")
        assert status == 200
        for path, body in [
            ("/api/v1/services/api/scale", {"replicas": 5}),
            ("/api/v1/services/api/rollout", {"action": "restart"}),
            (f"/api/v1/nodes/{NODE}/availability", {"availability": "drain"}),
        ]:
            status, reply = await viewer.post(path, body)
            assert status == 403, reply
            assert reply["error"]["code"] == "PERMISSION_DENIED"
            assert "role viewer" in reply["error"]["message"]
    finally:
        await viewer.close()
    services = await web.control("Get", {"kind": "services"})
    assert services["items"][0]["spec"]["replicas"] == 1
    refused = [r for r in audit(web) if r["outcome"] == "PERMISSION_DENIED"]
    assert {(r["user"], r["method"]) for r in refused} == {
        ("vera", "Scale"),
        ("vera", "Rollout"),
        ("vera", "UpdateNode"),
    }
    events = await web.control("Events", {"type": "Warning"})
    assert {e["object"] for e in events["events"]} >= {"call/Scale", "call/UpdateNode"}


async def test_an_action_without_the_csrf_header_changes_nothing(web: Web, admin: Browser) -> None:
    await web.apply("api", 1)
    status, reply = await admin.post("/api/v1/services/api/scale", {"replicas": 4}, csrf=False)
    assert status == 403 and "X-Shoal-CSRF" in reply["error"]["message"]
    services = await web.control("Get", {"kind": "services"})
    assert services["items"][0]["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        pytest.param("/api/v1/services/api/scale", {"replicas": -1}, 400, "replicas", id="neg"),
        pytest.param("/api/v1/services/api/scale", {"replica": 2}, 400, "replicas", id="missing"),
        pytest.param("/api/v1/services/api/scale", [1], 400, "request", id="not-object"),
        pytest.param("/api/v1/services/nope/scale", {"replicas": 2}, 404, None, id="no-service"),
        pytest.param("/api/v1/services/api/rollout", {"action": "bogus"}, 400, "action", id="act"),
        pytest.param(
            "/api/v1/services/api/rollout", {"action": "undo"}, 400, None, id="nothing-to-undo"
        ),
        pytest.param(
            "/api/v1/nodes/n9/availability", {"availability": "drain"}, 404, None, id="no-node"
        ),
        pytest.param(
            f"/api/v1/nodes/{NODE}/availability", {"availability": "gone"}, 400, "availability",
            id="availability",
        ),
    ],
)  # fmt: skip
async def test_bad_requests_name_the_field_and_change_nothing(
    web: Web, admin: Browser, path: str, body: Any, status: int, field: str | None
) -> None:
    await web.apply("api", 1)
    before = await web.control("Get", {"kind": "services"})
    got, reply = await admin.post(path, body)
    assert got == status, reply
    assert set(reply["error"]) <= {"code", "message", "field"}
    assert reply["error"].get("field") == field
    assert "Traceback" not in reply["error"]["message"]
    after = await web.control("Get", {"kind": "services"})
    assert after["items"][0]["spec"] == before["items"][0]["spec"]


async def test_a_body_that_is_not_json_is_a_400(web: Web, admin: Browser) -> None:
    headers = {"X-Shoal-CSRF": admin.csrf, "Content-Type": "application/json"}
    async with admin.client.post(
        f"{web.url}/api/v1/services/api/scale", data=b"{nope", headers=headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == "request"


async def sse_failure(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """Read a stream until its ``event: failure`` message; that message's error."""
    failing = False
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        failing = failing or line == "event: failure"
        if failing and line.startswith("data: "):
            error: dict[str, Any] = json.loads(line[6:])["error"]
            return error
    raise AssertionError("the stream ended with no failure message")


async def test_a_removed_users_session_ends_with_its_open_streams(web: Web) -> None:
    viewer = await web.browser(await web.viewer("gone"))
    try:
        assert (await viewer.get("/api/v1/services"))[0] == 200
        async with viewer.client.get(
            f"{web.url}/api/v1/events?limit=1&csrf={viewer.csrf}"
        ) as response:
            assert response.status == 200
            await web.control("UserRemove", {"name": "gone"})
            error = await asyncio.wait_for(sse_failure(response), 5)
            assert error["code"] == "UNAUTHENTICATED" and "removed" in error["message"]
        status, reply = await viewer.get("/api/v1/services")
        assert status == 401 and "removed" in reply["error"]["message"]
    finally:
        await viewer.close()


async def test_a_session_ends_when_its_users_certificate_does(web: Web) -> None:
    # A user whose certificate is valid for 10 s more (the CA's shortest).
    cert, key = web.manager.security.ca.issue_pair("brief", "viewer", timedelta(seconds=10))
    brief = web.admin._replace(cert_pem=cert, key_pem=key, user="brief")
    not_after = read_cert(cert).not_after
    viewer = await web.browser(brief)
    try:
        status, session = await viewer.get("/api/v1/session")
        assert status == 200 and session["user"] == "brief"
        assert datetime.fromisoformat(session["expiresAt"]) <= not_after
        async with viewer.client.get(
            f"{web.url}/api/v1/events?limit=1&csrf={viewer.csrf}"
        ) as response:
            assert response.status == 200
            error = await asyncio.wait_for(sse_failure(response), 15)
            assert datetime.now(UTC) >= not_after
            assert error["code"] == "UNAUTHENTICATED" and "ended" in error["message"]
        status, reply = await viewer.get("/api/v1/services")
        assert status == 401 and "ended" in reply["error"]["message"]
    finally:
        await viewer.close()


async def test_signing_out_ends_the_session_even_for_a_kept_cookie(
    web: Web, admin: Browser
) -> None:
    cookie = next(c for c in admin.client.cookie_jar if c.key == COOKIE).value
    status, _ = await admin.post("/api/v1/logout", {})
    assert status == 200
    assert await status_with_cookie(web, cookie) == 401


async def read_sse(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            found.append(json.loads(line[6:]))
            if len(found) >= count:
                break
    return found


async def test_the_event_stream_sends_history_then_new_events(web: Web, admin: Browser) -> None:
    await web.apply("api", 1)
    await web.running("api", 1)
    async with admin.client.get(
        f"{web.url}/api/v1/events?service=api&limit=1&csrf={admin.csrf}"  # as EventSource sends it
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        [first] = await read_sse(response, 1)
        assert first["service"] == "api"
        await web.control("Scale", {"replicas": {"api": 2}})

        async def scaled() -> dict[str, Any]:
            while True:
                [event] = await read_sse(response, 1)
                if event["reason"] == "Scaled":
                    return event

        event = await asyncio.wait_for(scaled(), 10)
        assert event["message"] == "replicas set to 2"
        assert event["cursor"] > first["cursor"]


async def test_a_bad_event_filter_is_a_400_before_the_stream(web: Web, admin: Browser) -> None:
    status, reply = await admin.get("/api/v1/events?type=Loud")
    assert status == 400 and reply["error"]["code"] == "INVALID_ARGUMENT"


async def test_logs_of_a_missing_service_are_a_404(web: Web, admin: Browser) -> None:
    status, reply = await admin.get("/api/v1/services/nope/logs")
    assert status == 404 and "nope" in reply["error"]["message"]


async def test_the_logs_stream_takes_since_and_timestamps(web: Web, admin: Browser) -> None:
    await web.apply("api", 1)
    await web.running("api", 1)
    await asyncio.sleep(0.05)
    since = format_time(datetime.now(UTC))
    [first] = (await web.control("Get", {"kind": "tasks", "service": "api"}))["items"]
    base = f"{web.url}/api/v1/services/api/logs?csrf={admin.csrf}"
    async with admin.client.get(f"{base}&tail=10&timestamps=true") as response:
        assert response.status == 200
        [line] = await asyncio.wait_for(read_sse(response, 1), 10)
        assert line["task"] == first["name"]
        assert parse_time(line["time"]) <= parse_time(since)
    async with admin.client.get(f"{base}&tail=10") as response:
        [line] = await asyncio.wait_for(read_sse(response, 1), 10)
        assert "time" not in line  # as `shoal logs` without -t
    # Lines older than since are left out: the first line seen is the new task's.
    async with admin.client.get(f"{base}&since={since}&timestamps=1") as response:
        assert response.status == 200
        await web.control("Scale", {"replicas": {"api": 2}})
        [line] = await asyncio.wait_for(read_sse(response, 1), 10)
        assert line["task"] != first["name"] and line["task"].startswith("api.")
        assert parse_time(line["time"]) >= parse_time(since)


@pytest.mark.parametrize(
    ("query", "field"),
    [("since=yesterday", "since"), ("since=", "since"), ("timestamps=maybe", "timestamps")],
)
async def test_a_bad_logs_query_is_a_400_naming_it(
    web: Web, admin: Browser, query: str, field: str
) -> None:
    await web.apply("api", 1)
    status, reply = await admin.get(f"/api/v1/services/api/logs?{query}")
    assert status == 400, reply
    assert reply["error"]["field"] == field
    assert reply["error"]["code"] == "INVALID_ARGUMENT"


async def test_ui_login_without_a_listener_says_how_to_turn_it_on(web: Web) -> None:
    await web.manager.web.aclose()
    with pytest.raises(ApiError) as caught:
        await web.control("UiLogin", {})
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "--http-listen" in caught.value.message


async def test_the_ui_and_its_assets_are_served_from_the_package(web: Web) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{web.url}/") as response:
            assert response.status == 200
            page = await response.text()
            assert '<script type="module" src="/static/app.js">' in page
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        async with client.get(f"{web.url}/static/app.js") as response:
            assert response.status == 200
            assert "EventSource" in await response.text()
        async with client.get(f"{web.url}/static/../sessions.py") as response:
            assert response.status in (403, 404)
