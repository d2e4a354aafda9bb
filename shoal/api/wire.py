"""What both ends of the Control and Dispatcher services agree on, importable without grpc.

The names, limits and credential shape here are shared by the grpc.aio side
(``shoal.api.transport``) and the CLI's unary client (``shoal.api.unary``),
which must not pay for importing grpc.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: the CLI's every command loads this module
if TYPE_CHECKING:
    from typing import Any, Protocol

    Payload = dict[str, Any]
else:
    Payload = dict

# Messages of a few MiB are legitimate (a full assignment set for a busy node).
MAX_MESSAGE = 64 * 1024 * 1024

# Managers are verified by this name (a SAN of every manager certificate), not by
# the address dialled: a manager may be reached at any address.
MANAGER_NAME = "shoal-manager"

CONTROL_SERVICE = "shoal.v1.Control"
DISPATCHER_SERVICE = "shoal.v1.Dispatcher"
DEFAULT_PORT = 7420
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"


if TYPE_CHECKING:

    class TlsCredentials(Protocol):
        """What a mutual-TLS channel needs (``shoal.security.credentials.TlsIdentity``)."""

        @property
        def ca_pem(self) -> bytes: ...
        @property
        def cert_pem(self) -> bytes: ...
        @property
        def key_pem(self) -> bytes: ...

else:
    TlsCredentials = object  # a Protocol, for the type checker only
