"""Property-based: no request to the HTTP API makes it fail in a way a user cannot act on.

Every route of a real manager's listener gets generated names, query strings,
bodies (JSON objects of the fields shoal reads, arbitrary bytes, non-objects)
and CSRF headers, with a signed-in admin's cookie: every answer is below 500,
and every refusal is the JSON error body naming a code and a message. Seeded
and bounded, so CI runs the same cases in seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.api.transport import CONTROL_SERVICE, decode, encode
from shoal.http.api import ROUTES
from shoal.http.sessions import COOKIE, CSRF_HEADER
from tests.fuzzing import RAW, secure_channel, serve_manager
from tests.http.conftest import page_token

QUERY = ["service", "all", "node", "type", "object", "limit", "tail", "token"]
# What a header value may hold (control characters are not HTTP: aiohttp's parser refuses
# them with a 400 of its own before any handler runs).
HEADER_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))
NAMES = st.sampled_from(["api", "fuzz-node", "nope", "", "..", "a/b", "é"]) | st.text(max_size=20)


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, str, str, str]]:
    """A manager with a web listener on a thread of its own: (host, port, session cookie,
    page token)."""
    with serve_manager(root, http=True) as served:
        channel = secure_channel(served.address, served.admin)
        login = channel.unary_unary(
            f"/{CONTROL_SERVICE}/UiLogin", request_serializer=encode, response_deserializer=decode
        )
        link = urllib.parse.urlsplit(login({}, timeout=10)["url"])
        channel.close()
        host, port = str(link.hostname), str(link.port)
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request(  # the login page's Sign in button, as a browser sends it
            "POST",
            link.path,
            body=link.query,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": f"http://{host}:{port}",
            },
        )
        response = connection.getresponse()
        assert response.status == 200
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        assert cookie.startswith(f"{COOKIE}=")
        token = page_token(response.read().decode())
        connection.close()
        yield host, port, cookie, token


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, str]]:
    with serve(tmp_path_factory.mktemp("http-fuzz")) as running:
        yield running


def csrf(served: tuple[str, str, str, str]) -> str:
    return served[3]


# Every route but signing out, which would end the session the other cases use
# (tests/http/test_api.py covers it).
FUZZED = [doc for doc, _ in ROUTES if doc.path != "/api/v1/logout"]
BOUNDED = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@BOUNDED
@given(
    route=st.sampled_from(FUZZED),
    name=NAMES,
    query=st.dictionaries(st.sampled_from(QUERY) | st.text(max_size=6), st.text(max_size=12)),
    body=RAW,
    token=st.none() | st.just("right") | st.text(HEADER_TEXT, max_size=40),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
)
def test_no_request_gets_a_500_or_an_answer_without_a_reason(
    served: tuple[str, str, str, str],
    route: Any,
    name: str,
    query: dict[str, str],
    body: bytes,
    token: str | None,
    content_type: str,
) -> None:
    host, port, cookie, _ = served
    path = route.path.replace("{name}", urllib.parse.quote(name, safe=""))
    if query:
        path += "?" + urllib.parse.urlencode(query)
    headers = {"Cookie": cookie}
    if content_type:
        headers["Content-Type"] = content_type
    if token is not None:
        value = csrf(served) if token == "right" else token
        headers[CSRF_HEADER] = value.encode("utf-8").decode("latin-1")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(route.method, path, body=body if route.method == "POST" else None,
                           headers=headers)  # fmt: skip
        response = connection.getresponse()
        assert response.status < 500, (route.method, path, response.read()[:300])
        if response.status >= 400 and route.path != "/login":
            error = json.loads(response.read())["error"]
            assert error["code"] and error["message"]
            assert "Traceback" not in error["message"]
    finally:
        connection.close()  # a stream (events, logs) ends when its client goes
