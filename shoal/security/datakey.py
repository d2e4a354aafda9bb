"""The data key: AES-256-GCM encryption of what shoal keeps at rest.

One 32-byte key per cluster, in a file readable only by its owner (a manager's
state dir by default; with etcd every manager is given the same file). Whatever
must not sit in the store in the clear (the CA's private key, secrets' bytes) is
``seal``ed with it before it is written and ``open``ed after it is read.

The interface, shared by the CA (``shoal.security.ca``) and secrets:

    key = DataKey.load_or_create(path)      # 0600, created if missing
    blob = key.seal(plaintext, context=b"ca-key")
    key.open(blob, context=b"ca-key")       # -> plaintext, or DataKeyError
    key.key_id                              # 16 hex digits naming the key, not revealing it

``context`` is bound into the ciphertext as associated data: a blob sealed for
one purpose (say ``secret/db-pass``) cannot be passed off as another. A blob is
``version (1 byte) | nonce (12 bytes) | ciphertext+tag``; the nonce is random,
which is safe far beyond the number of objects a cluster ever seals.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.errors import DataKeyError

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = 1


class DataKey:
    """An AES-256-GCM key; see the module docstring."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"a data key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.path = path
        # Names the key without revealing it: a store records the id of the key its
        # blobs were sealed with, so a manager given another key can say so at once.
        self.key_id = hashlib.sha256(b"shoal-data-key-id\0" + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> DataKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load(cls, path: Path) -> DataKey:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise DataKeyError(f"cannot read the data key {path}: {exc.strerror}") from exc
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise DataKeyError(f"{path} is not a shoal data key (64 hex digits)") from exc
        return cls(raw, path)

    @classmethod
    def load_or_create(cls, path: Path) -> DataKey:
        """The key in ``path``; a new one written there (mode 0600) if there is none."""
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # somebody else created it first: use theirs
            return cls.load(path)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
        return cls(key, path)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != VERSION:
            raise DataKeyError("not a sealed shoal blob")
        nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context)
        except InvalidTag as exc:
            raise DataKeyError(
                "cannot decrypt with this data key: it is not the key the data was sealed with"
            ) from exc
