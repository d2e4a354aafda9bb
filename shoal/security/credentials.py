"""A holder's TLS identity (CA, certificate, key) and where it is kept on disk.

Agents and managers keep theirs under ``STATE_DIR/identity/`` as ``ca.pem``,
``cert.pem`` and ``key.pem``, each written atomically with mode 0600. A user's
credentials travel as one bundle file (``shoal.security.contexts``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from shoal.security.ca import CertInfo, read_cert

IDENTITY_DIR = "identity"


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@dataclass(frozen=True)
class TlsIdentity:
    """PEM bytes of the cluster CA, the holder's certificate and its private key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def info(self) -> CertInfo:
        return read_cert(self.cert_pem)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.info.not_after

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(directory / "ca.pem", self.ca_pem)
        write_private(directory / "key.pem", self.key_pem)
        write_private(directory / "cert.pem", self.cert_pem)

    @classmethod
    def load(cls, directory: Path) -> TlsIdentity | None:
        """The identity kept in ``directory``, or None if there is none (or it is torn)."""
        try:
            identity = cls(
                (directory / "ca.pem").read_bytes(),
                (directory / "cert.pem").read_bytes(),
                (directory / "key.pem").read_bytes(),
            )
            identity.info  # noqa: B018 - parse now: a torn file means "no identity"
        except (OSError, ValueError):
            return None
        return identity
