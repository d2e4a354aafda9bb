"""Joining a cluster, the manager's side: how a node without a certificate gets one.

grpcio cannot ask for a client certificate without requiring one (there is no
"verify it if given" mode), so the calls a node makes before it has a
certificate cannot share the mutual-TLS port. They have a listener of their own,
the **join listener** (``--join-listen``, by default the main port + 2), serving
only ``shoal.v1.Join/IssueCertificate``. It is TLS, but server-authenticated
only, and its server certificate is the cluster CA's own certificate:

1. The joiner parses its token ``SHOAL-1-<CA digest>-<secret>``.
2. It opens a TLS connection to the join listener without verifying anything
   and takes the certificate the server presents: the CA certificate itself. If
   its SHA-256 is not the token's digest, the joiner stops there (the address is
   another cluster's, or somebody in between): nothing was sent.
3. Now trusting exactly that CA, it opens a verified gRPC channel to the join
   listener and sends the token, its node id and a CSR for a key it just made.
   The manager compares the token with the worker and manager tokens in constant
   time (the match decides the role), claims the node id (a name another node
   holds is refused) and returns the certificate.
4. From then on the certificate is the node's identity on the mutual-TLS port;
   the token is not sent again. Renewal (``shoal.v1.Certificates/Renew``) is a
   call on the mutual-TLS port authenticated by the current certificate.

So the token only ever travels over a channel verified against the CA its digest
names, as with Swarm's join (whose Go server can share one port).
"""

from __future__ import annotations

import re
from datetime import timedelta

import grpc
import grpc.aio

from shoal.api.transport import Payload, Unary
from shoal.errors import AuthError
from shoal.security.authz import current_caller
from shoal.security.ca import ROLE_MANAGER, ROLE_WORKER, CertificateAuthority
from shoal.security.enroll import CERTIFICATES_SERVICE, JOIN_SERVICE
from shoal.security.state import SecurityState
from shoal.security.tokens import token_matches

__all__ = ["CERTIFICATES_SERVICE", "JOIN_SERVICE", "JoinService", "check_node_id"]

NODE_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")
MAX_CSR = 8192


def _field(request: Payload, name: str, limit: int) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: required, a string")
    if len(value) > limit:
        raise ValueError(f"{name}: longer than {limit} characters")
    return value


def check_node_id(node_id: str) -> str:
    if not NODE_ID.match(node_id):
        raise ValueError(
            f"nodeId: {node_id[:70]!r} is not a node name (1-63 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit)"
        )
    return node_id


class JoinService:
    """The join listener's one method, and the mutual-TLS ``Renew``."""

    def __init__(
        self, ca: CertificateAuthority, state: SecurityState, cert_expiry: timedelta
    ) -> None:
        self.ca = ca
        self.state = state
        self.cert_expiry = cert_expiry

    def join_methods(self) -> dict[str, Unary]:
        return {"IssueCertificate": Unary(self.issue)}

    def certificate_methods(self) -> dict[str, Unary]:
        return {"Renew": Unary(self.renew)}

    async def issue(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        token = _field(request, "token", 200)
        node_id = check_node_id(_field(request, "nodeId", 63))
        csr = _field(request, "csr", MAX_CSR)
        role = None
        for candidate in (ROLE_WORKER, ROLE_MANAGER):
            expected = self.state.tokens.get(candidate, "")
            if expected and token_matches(token, expected):
                role = candidate
        if role is None:
            raise AuthError(
                "join token refused: it is not this cluster's current worker or manager token "
                "(print the current one with `shoal token worker` on a manager)"
            )
        await self.state.wait_past_revocation("node", node_id)
        cert = self.ca.issue(csr.encode(), node_id, role, self.cert_expiry)
        await self.state.claim_node(node_id, role)
        return {"cert": cert.decode(), "ca": self.ca.cert_pem.decode(), "role": role}

    async def renew(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        caller = current_caller()
        if caller is None:  # pragma: no cover - the authorizer always sets it
            raise AuthError("renewal needs a node certificate")
        csr = _field(request, "csr", MAX_CSR)
        cert = self.ca.issue(csr.encode(), caller.name, caller.role, self.cert_expiry)
        return {"cert": cert.decode(), "ca": self.ca.cert_pem.decode()}
