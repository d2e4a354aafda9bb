"""A manager's side of cluster identity, in one object the server wires in.

``ManagerSecurity`` opens the security state (with the manager's data key), loads (or, on the
first manager, creates) the CA, issues the manager its own certificate
(CN = ``manager-<id>``, OU = manager) and renews it at a random 50-80 % of its
lifetime, serves the join listener, and wraps the services with the authorizer
and the audit log. It also writes the local admin bundle (``admin.yaml`` in the
state dir, mode 0600) that the CLI finds the way it finds the local endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import structlog

from shoal.api.transport import SERVER_OPTIONS, Method, server_credentials, service_handler
from shoal.errors import AuthError
from shoal.reconciler.informer import Informer
from shoal.security.audit import AUDIT_FILE, AuditLog
from shoal.security.authz import Authorizer
from shoal.security.ca import (
    ROLE_ADMIN,
    ROLE_MANAGER,
    ROLE_WORKER,
    CertificateAuthority,
    read_cert,
    renew_at,
)
from shoal.security.contexts import ADMIN_BUNDLE, CredentialsError, dump_text, parse_text
from shoal.security.credentials import TlsIdentity, write_private
from shoal.security.datakey import DataKey
from shoal.security.join import CERTIFICATES_SERVICE, JOIN_SERVICE, JoinService
from shoal.security.service import SecurityControl
from shoal.security.state import SecurityState
from shoal.store.base import Store

log = structlog.get_logger(__name__)

# User certificates (bundles) last a year, like kubeadm's admin.conf: people do not
# renew automatically; node certificates follow --cert-expiry and renew themselves.
USER_EXPIRY = timedelta(days=365)
ADMIN_USER = "admin"


class ManagerSecurity:
    """See the module docstring."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        manager_id: str,
        cert_expiry: timedelta,
        data_key: DataKey,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.name = f"manager-{manager_id}"
        self.cert_expiry = cert_expiry
        self.data_key = data_key
        self.state = SecurityState(store, self.data_key)
        self._stack = contextlib.AsyncExitStack()
        self.join_address = ""

    async def start(self, cluster_id: str) -> None:
        self.ca: CertificateAuthority = await self.state.bootstrap(cluster_id)
        await self.state.start()
        self._stack.push_async_callback(self.state.aclose)
        self.identity = self._issue(self.name, ROLE_MANAGER)
        self.audit = AuditLog(self.state_dir / AUDIT_FILE)
        self.authorizer = Authorizer(self.ca.cluster_id, self.state, self.audit.denied)
        self.join = JoinService(self.ca, self.state, self.cert_expiry)
        self._stack.callback(self.audit.close)
        renewal = asyncio.create_task(self._renew_forever(), name="manager-cert-renewal")
        self._stack.callback(renewal.cancel)

    async def serve_join(self, listen: str) -> str:
        """Start the join listener on ``listen``; return its bound address."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        server.add_generic_rpc_handlers((service_handler(JOIN_SERVICE, self.join.join_methods()),))
        credentials = grpc.ssl_server_credentials([(self.ca.key_pem, self.ca.cert_pem)])
        port = server.add_secure_port(listen, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {listen} (--join-listen)")
        await server.start()
        self._stack.push_async_callback(server.stop, 1.0)
        host = listen.rpartition(":")[0].strip("[]")
        self.join_address = f"{'127.0.0.1' if host in ('0.0.0.0', '', '::') else host}:{port}"
        return self.join_address

    def server_credentials(self) -> grpc.ServerCredentials:
        return server_credentials(lambda: self.identity)

    def control_methods(
        self, informer: Informer, servers: Callable[[], list[str]]
    ) -> dict[str, Method]:
        """The identity methods of the Control service (tokens, users, node rm)."""
        self.identity_control = SecurityControl(self.ca, self.state, informer, USER_EXPIRY, servers)
        return self.identity_control.methods()

    def control(
        self,
        methods: Mapping[str, Method],
        admit: Callable[[dict[str, Method]], dict[str, Method]] = dict,
    ) -> dict[str, Method]:
        """The Control service's methods, audited and authorized; ``admit`` (the
        manager's admission gate) wraps them between the two, so a caller that is
        refused takes no admission slot and a call that is shed is still audited."""
        return self.authorizer.control(self.audited(methods, admit))

    def audited(
        self,
        methods: Mapping[str, Method],
        admit: Callable[[dict[str, Method]], dict[str, Method]] = dict,
    ) -> dict[str, Method]:
        """``methods`` audited and admitted, not yet authorized: for a listener that
        authorizes its callers itself (the web UI, ``shoal.http``) with the same roles."""
        return admit(self.audit.wrap(methods))

    def nodes(self, service: str, methods: Mapping[str, Method]) -> dict[str, Method]:
        return self.authorizer.nodes(service, methods)

    def certificate_handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            CERTIFICATES_SERVICE,
            self.authorizer.nodes(CERTIFICATES_SERVICE, self.join.certificate_methods()),
        )

    def _issue(self, name: str, role: str) -> TlsIdentity:
        cert, key = self.ca.issue_pair(name, role, self.cert_expiry)
        return TlsIdentity(self.ca.cert_pem, cert, key)

    async def local_node(self, name: str) -> TlsIdentity:
        """A worker identity for the agent ``shoal up`` runs beside this manager."""
        with contextlib.suppress(AuthError):  # the same local node, started again
            await self.state.claim_node(name, ROLE_WORKER)
        await self.state.wait_past_revocation("node", name)
        return self._issue(name, ROLE_WORKER)

    async def write_admin_bundle(self, servers: list[str]) -> Path:
        """``admin.yaml`` in the state dir, unless a current one for this CA is there."""
        path = self.state_dir / ADMIN_BUNDLE
        if not self._bundle_current(path):
            await self.state.add_user(ADMIN_USER, ROLE_ADMIN)
            bundle = self.identity_control.bundle(ADMIN_USER, ROLE_ADMIN)
            bundle["servers"] = servers
            bundle["name"] = "local"
            write_private(path, dump_text(bundle))
        return path

    def _bundle_current(self, path: Path) -> bool:
        try:
            bundle = parse_text(path.read_text(), str(path))
            if bundle.get("ca") != self.ca.cert_pem.decode():
                return False
            info = read_cert(str(bundle["cert"]).encode())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, CredentialsError):
            return False
        if self.state.is_revoked("user", info.common_name, info.issued_at):
            return False
        return datetime.now(UTC) < info.issued_at + info.lifetime / 2

    async def _renew_forever(self) -> None:
        while True:
            due = renew_at(self.identity.info)
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            self.identity = self._issue(self.name, ROLE_MANAGER)
            log.info("manager.certificate_renewed", not_after=str(self.identity.info.not_after))

    async def aclose(self) -> None:
        await self._stack.aclose()
