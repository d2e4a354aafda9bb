"""Sign-in to the web UI: single-use login links and signed session cookies.

A user signs in with the identity it already has: ``shoal ui`` calls the
Control method ``UiLogin`` with the user's certificate, and the manager answers
with a link holding a random token that works **once**, within ``LINK_TTL``,
on this manager. Opening it turns the token into a session cookie for that
user and role (the certificate's), and the token is gone.

The cookie is ``base64url(payload).base64url(HMAC-SHA256)`` with a key each
manager draws at start (so a restart signs everyone out): the payload names
the user, role, the certificate's issue time (a removed user's sessions are
refused like its certificates), the session id and when it expires: after
``SESSION_TTL``, or when the user's certificate does, if that is sooner. It is
``HttpOnly`` and ``SameSite=Strict``. An open stream ends (an ``event: failure``)
within ``shoal.http.api.SESSION_CHECK`` of its session's end, whatever ended it.

The cookie alone is not enough: browsers send a cookie to **every port** of its
host (RFC 6265 §8.5), so any other web server on this host could receive it. So
every API request must also carry the session's page token (``X-Shoal-CSRF``,
or ``?csrf=`` on an ``EventSource`` URL, which cannot set headers): an HMAC of the
session id, handed to the page once, in the sign-in page that ``/login``
answers with, and kept in the origin's ``localStorage`` (origins, unlike
cookies, include the port). A request from another site or another port can
neither send the cookie (SameSite) nor read or forge the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from shoal.errors import AuthError
from shoal.security.authz import Caller

COOKIE = "shoal_session"
CSRF_HEADER = "X-Shoal-CSRF"
LINK_TTL = timedelta(seconds=120)
SESSION_TTL = timedelta(hours=8)
# Login links not yet used, at most (older ones are dropped first).
MAX_LINKS = 1024


class SignInError(AuthError):
    """No session, or one that ended, or a bad login link: HTTP 401 (a role refusal is 403)."""


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in user of the web UI."""

    id: str
    caller: Caller
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bounded(expires: datetime, caller: Caller) -> datetime:
    """``expires``, or the caller's certificate's end if sooner: a session (or a link)
    never outlives the identity it was minted for."""
    return min(expires, caller.not_after) if caller.not_after is not None else expires


class Sessions:
    """Login links and session cookies of one manager's web listener."""

    def __init__(
        self, link_ttl: timedelta = LINK_TTL, session_ttl: timedelta = SESSION_TTL
    ) -> None:
        self.link_ttl = link_ttl
        self.session_ttl = session_ttl
        self._key = secrets.token_bytes(32)
        self._links: dict[str, tuple[Caller, datetime]] = {}
        self._ended: dict[str, datetime] = {}

    # ------------------------------------------------------------- links

    def new_link(self, caller: Caller, now: datetime | None = None) -> tuple[str, datetime]:
        """A single-use login token for ``caller``, and when it stops working."""
        now = now or datetime.now(UTC)
        self._links = {k: v for k, v in self._links.items() if v[1] > now}
        while len(self._links) >= MAX_LINKS:
            self._links.pop(next(iter(self._links)))
        token = secrets.token_urlsafe(32)
        expires = _bounded(now + self.link_ttl, caller)
        self._links[self._digest(token)] = (caller, expires)
        return token, expires

    def peek(self, token: str, now: datetime | None = None) -> tuple[Caller, datetime]:
        """Whom a login token signs in, and until when it works; it is not used up."""
        found = self._links.get(self._digest(token))
        if found is None:
            raise SignInError("this login link is not valid: it was used already or never issued")
        if found[1] <= (now or datetime.now(UTC)):
            raise SignInError("this login link has expired: run `shoal ui` for a new one")
        return found

    def redeem(self, token: str, now: datetime | None = None) -> Session:
        """The session a login token opens; the token is used up, whatever happens."""
        now = now or datetime.now(UTC)
        found = self._links.pop(self._digest(token), None)
        if found is None:
            raise SignInError("this login link is not valid: it was used already or never issued")
        caller, expires = found
        if expires <= now:
            raise SignInError("this login link has expired: run `shoal ui` for a new one")
        return Session(secrets.token_urlsafe(16), caller, _bounded(now + self.session_ttl, caller))

    # ----------------------------------------------------------- cookies

    def cookie(self, session: Session) -> str:
        caller = session.caller
        payload = orjson.dumps(
            {
                "s": session.id,
                "u": caller.name,
                "r": caller.role,
                "i": caller.issued_at.timestamp(),
                "e": session.expires_at.timestamp(),
            }
        )
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def open(self, cookie: str | None, now: datetime | None = None) -> Session:
        """The session a cookie stands for; ``SignInError`` when there is none."""
        if not cookie:
            raise SignInError("not signed in: run `shoal ui` and open the link it prints")
        now = now or datetime.now(UTC)
        body, _, signature = cookie.partition(".")
        try:
            payload = _unb64(body)
            valid = hmac.compare_digest(_unb64(signature), self._sign(payload))
            data = orjson.loads(payload) if valid else None
            session = (
                Session(
                    str(data["s"]),
                    Caller(
                        str(data["u"]),
                        str(data["r"]),
                        datetime.fromtimestamp(float(data["i"]), UTC),
                    ),
                    datetime.fromtimestamp(float(data["e"]), UTC),
                )
                if isinstance(data, dict)
                else None
            )
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            session = None
        if session is None:
            raise SignInError("the session cookie is not valid here: sign in again with `shoal ui`")
        self.check(session, now)
        return session

    def check(self, session: Session, now: datetime | None = None) -> None:
        """``SignInError`` once the session has expired or was signed out."""
        if session.expires_at <= (now or datetime.now(UTC)) or session.id in self._ended:
            raise SignInError("the session has ended: sign in again with `shoal ui`")

    def end(self, session: Session, now: datetime | None = None) -> None:
        """Sign out: the cookie is refused from now on, even if a copy is kept."""
        now = now or datetime.now(UTC)
        self._ended = {k: v for k, v in self._ended.items() if v > now}
        self._ended[session.id] = session.expires_at

    def csrf_token(self, session: Session) -> str:
        return _b64(self._sign(b"csrf:" + session.id.encode()))

    def check_csrf(self, session: Session, token: str | None) -> None:
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a 403).
        given = (token or "").encode("utf-8", "replace")
        if not given or not hmac.compare_digest(given, self.csrf_token(session).encode()):
            raise AuthError(
                f"this request lacks the {CSRF_HEADER} header (the page token the sign-in "
                "page gives): refused as a possible cross-site request"
            )

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def _digest(self, token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()
