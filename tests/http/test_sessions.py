"""Login links and session cookies, on a clock given to them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shoal.errors import AuthError
from shoal.http.sessions import Sessions, SignInError
from shoal.security.authz import Caller

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE = Caller("alice", "viewer", NOW - timedelta(days=1))


def test_a_link_opens_one_session_for_its_user_and_role() -> None:
    sessions = Sessions()
    token, expires = sessions.new_link(ALICE, NOW)
    assert expires == NOW + sessions.link_ttl
    session = sessions.redeem(token, NOW + timedelta(seconds=5))
    assert session.caller == ALICE
    opened = sessions.open(sessions.cookie(session), NOW + timedelta(minutes=1))
    assert opened == session
    with pytest.raises(SignInError, match="used already"):
        sessions.redeem(token, NOW + timedelta(seconds=6))


def test_an_expired_link_is_used_up_and_refused() -> None:
    sessions = Sessions()
    token, _ = sessions.new_link(ALICE, NOW)
    with pytest.raises(SignInError, match="expired"):
        sessions.redeem(token, NOW + sessions.link_ttl)
    with pytest.raises(SignInError, match="used already"):
        sessions.redeem(token, NOW)


def test_a_session_expires() -> None:
    sessions = Sessions(session_ttl=timedelta(hours=1))
    token, _ = sessions.new_link(ALICE, NOW)
    cookie = sessions.cookie(sessions.redeem(token, NOW))
    sessions.open(cookie, NOW + timedelta(minutes=59))
    with pytest.raises(SignInError, match="ended"):
        sessions.open(cookie, NOW + timedelta(hours=1))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda c: "", id="empty"),
        pytest.param(lambda c: c.split(".")[0], id="unsigned"),
        pytest.param(lambda c: c[:-3] + ("AAA" if c[-3:] != "AAA" else "BBB"), id="signature"),
        pytest.param(lambda c: "e30." + c.split(".")[1], id="other-payload"),
        pytest.param(lambda c: "%%%.%%%", id="garbage"),
    ],
)
def test_a_cookie_not_signed_by_this_manager_is_refused(mangle: object) -> None:
    sessions = Sessions()
    token, _ = sessions.new_link(ALICE, NOW)
    cookie = sessions.cookie(sessions.redeem(token, NOW))
    assert callable(mangle)
    with pytest.raises(SignInError):
        sessions.open(mangle(cookie), NOW)
    with pytest.raises(SignInError):  # nor by another manager (a restart draws a new key)
        Sessions().open(cookie, NOW)


def test_the_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions()
    one = sessions.redeem(sessions.new_link(ALICE, NOW)[0], NOW)
    two = sessions.redeem(sessions.new_link(ALICE, NOW)[0], NOW)
    sessions.check_csrf(one, sessions.csrf_token(one))
    with pytest.raises(AuthError, match="X-Shoal-CSRF"):
        sessions.check_csrf(one, sessions.csrf_token(two))
    with pytest.raises(AuthError):
        sessions.check_csrf(one, None)
    with pytest.raises(AuthError, match="X-Shoal-CSRF"):  # a refusal, not a TypeError
        sessions.check_csrf(one, "é" * 43)
