"""Join tokens: ``SHOAL-1-<CA digest>-<secret>``.

The digest is the SHA-256 of the cluster CA certificate (64 hex digits, what
``openssl x509 -noout -fingerprint -sha256`` prints without the colons), so a
joiner can tell the CA it reaches is the one the token belongs to before it
sends anything. The secret (32 hex digits, 128 random bits) says which role the
joiner gets: a cluster has one worker and one manager token. Rotating a token
changes its secret: the old one stops new joins, nodes that joined keep their
certificates.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from shoal.errors import AuthError

PREFIX = "SHOAL-1-"
_TOKEN = re.compile(r"^SHOAL-1-([0-9a-f]{64})-([0-9a-f]{32})$")


@dataclass(frozen=True, slots=True)
class JoinToken:
    ca_digest: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.ca_digest}-{self.secret}"


def new_token(ca_digest: str) -> JoinToken:
    return JoinToken(ca_digest, secrets.token_hex(16))


def parse_token(text: str) -> JoinToken:
    """The token in ``text``; ``AuthError`` saying what is wrong with it otherwise."""
    match = _TOKEN.match(text.strip())
    if match is None:
        if not text.strip().startswith(PREFIX):
            raise AuthError("this is not a shoal join token (they start with SHOAL-1-)")
        raise AuthError(
            "malformed join token: expected SHOAL-1-<64 hex digits>-<32 hex digits>; "
            "print a fresh one with `shoal token worker` on a manager"
        )
    return JoinToken(match.group(1), match.group(2))


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison of two whole tokens."""
    return secrets.compare_digest(presented.strip().encode(), expected.encode())
