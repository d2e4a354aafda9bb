"""The Control methods of cluster identity: tokens, users, removing nodes.

    Token        {role, rotate?}            -> {role, token}
    UserAdd      {name, role, csr?}         -> a credential bundle (see contexts)
    UserList     {}                         -> {items: [{name, role, createdAt}]}
    UserRemove   {name}                     -> {removed}   (revokes its certificates)
    NodeRemove   {name, force?}             -> {removed}   (revokes, tasks rescheduled)

All of them want role admin (``shoal.security.authz``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc.aio

from shoal.api.transport import Method, Payload, Unary
from shoal.errors import NotFoundError
from shoal.models import NodeState
from shoal.reconciler.informer import Informer
from shoal.security.ca import (
    NODE_ROLES,
    USER_ROLES,
    CertificateAuthority,
    key_pem,
    make_csr,
    new_key,
)
from shoal.security.join import check_node_id
from shoal.security.state import SecurityState
from shoal.store.typed import NODES, Change


def _name(request: Payload, what: str = "name") -> str:
    value = request.get(what)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: required, a string")
    return _checked(value, what)


def _checked(value: str, what: str) -> str:
    try:
        return check_node_id(value)
    except ValueError as exc:
        raise ValueError(str(exc).replace("nodeId", what, 1)) from None


class SecurityControl:
    """Handlers of the identity part of the Control service."""

    def __init__(
        self,
        ca: CertificateAuthority,
        state: SecurityState,
        informer: Informer,
        user_expiry: timedelta,
        servers: Callable[[], list[str]],
    ) -> None:
        self.ca = ca
        self.state = state
        self.informer = informer
        self.user_expiry = user_expiry
        self.servers = servers

    def methods(self) -> dict[str, Method]:
        return {
            "Token": Unary(self.token),
            "UserAdd": Unary(self.user_add),
            "UserList": Unary(self.user_list),
            "UserRemove": Unary(self.user_remove),
            "NodeRemove": Unary(self.node_remove),
        }

    async def token(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        role = request.get("role", "worker")
        if role not in NODE_ROLES:
            raise ValueError(f"role: unknown token role {role!r} (worker or manager)")
        if request.get("rotate"):
            token = await self.state.rotate_token(str(role), self.ca.digest)
        else:
            token = self.state.tokens[str(role)]
        return {"role": role, "token": token}

    def bundle(self, name: str, role: str, csr: str | None = None) -> dict[str, Any]:
        """A credential bundle for user ``name``: what ``shoal context import`` reads."""
        key_text = None
        if csr is None:
            key = new_key()
            csr = make_csr(key, name).decode()
            key_text = key_pem(key).decode()
        cert = self.ca.issue(csr.encode(), name, role, self.user_expiry)
        bundle: dict[str, Any] = {
            "apiVersion": "shoal/v1",
            "kind": "Credentials",
            "name": self.ca.cluster_id,
            "cluster": self.ca.cluster_id,
            "user": name,
            "role": role,
            "servers": self.servers(),
            "ca": self.ca.cert_pem.decode(),
            "cert": cert.decode(),
        }
        if key_text is not None:
            bundle["key"] = key_text
        return bundle

    async def user_add(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = _name(request)
        role = request.get("role")
        if role not in USER_ROLES:
            raise ValueError(f"role: must be admin or viewer, got {role!r}")
        csr = request.get("csr")
        if csr is not None and not isinstance(csr, str):
            raise ValueError("csr: must be a PEM string")
        await self.state.wait_past_revocation("user", name)
        bundle = self.bundle(name, str(role), csr)
        await self.state.add_user(name, str(role))
        return bundle

    async def user_list(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        items = [
            {"name": name, "role": record.get("role"), "createdAt": record.get("createdAt")}
            for name, record in sorted(self.state.users.items())
        ]
        return {"items": items}

    async def user_remove(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = _name(request)
        await self.state.remove("user", name)
        return {"removed": name}

    async def node_remove(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = _name(request)
        entry = self.informer.nodes.get(name)
        if entry is None and name not in self.state.nodes:
            raise NotFoundError(f"node {name!r} not found")
        if (
            entry is not None
            and entry.obj.status.state == NodeState.READY
            and not request.get("force")
        ):
            raise ValueError(
                f"name: node {name!r} is ready; removing it stops its agent from talking to "
                "the cluster and moves its tasks: use --force to remove it anyway"
            )
        # Revoke first: from here on the agent's calls are refused, whatever happens next.
        await self.state.remove("node", name)
        if entry is not None:
            await self.informer.commit([Change.delete(NODES + name, None)])
        return {"removed": name}
