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

A key file that group or others may read is refused (as ssh refuses such a
private key), and a new one appears complete or not at all (written aside, then
hard-linked into place), so managers starting together never read half a key.

The store's key check value
    A manager given the wrong key must refuse to start, rather than fail on the
    first secret or, worse, seal new secrets under a second key. The first
    manager of a store records ``/cluster/datakey``: its key id and a constant
    sealed with the key. ``verify_against_store`` opens that check value at
    every start and raises ``DataKeyError`` naming both key ids when it does not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.errors import DataKeyError
from shoal.store.base import Compare, Put, Store

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = 1
# Where the key check value is stored (beside /cluster/config).
CHECK_KEY = "/cluster/datakey"
_CHECK_PLAINTEXT = b"shoal data key check"


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
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text().strip()
        except OSError as exc:
            raise DataKeyError(f"cannot read the data key {path}: {exc.strerror}") from exc
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise DataKeyError(f"{path} is not a shoal data key (64 hex digits)") from exc
        if mode & 0o077:
            raise DataKeyError(
                f"the data key {path} may be read by others (mode {mode:04o}); "
                f"make it private: chmod 600 {path}"
            )
        return cls(raw, path)

    @classmethod
    def load_or_create(cls, path: Path) -> DataKey:
        """The key in ``path``; a new one written there (mode 0600) if there is none."""
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (key.hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # somebody else created it first: use theirs
            return cls.load(path)
        finally:
            tmp.unlink()
        return cls(key, path)

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "memory"

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


async def verify_against_store(key: DataKey, store: Store) -> None:
    """Make sure ``key`` is the key the store's values are sealed with.

    The first manager of a store records the key check value; every later
    start checks it. Raises ``DataKeyError`` on a mismatch (nothing is written).
    """
    kv = await store.get(CHECK_KEY)
    if kv is None:
        record = {
            "keyId": key.key_id,
            "check": base64.b64encode(key.seal(_CHECK_PLAINTEXT, CHECK_KEY.encode())).decode(),
            "createdAt": datetime.now(UTC).isoformat(),
        }
        result = await store.txn(
            [Compare(CHECK_KEY, "version", "==", 0)],
            [Put(CHECK_KEY, json.dumps(record).encode())],
        )
        if result.succeeded:
            return
        kv = await store.get(CHECK_KEY)  # another manager was first: check against its key
        if kv is None:
            raise DataKeyError("the data key check value vanished from the store; start again")
    check_value(key, kv.value, "this store's")


def check_value(key: DataKey, value: bytes, whose: str) -> None:
    """Raise ``DataKeyError`` unless ``value`` (a stored key check record) was sealed
    with ``key``; ``whose`` names where the record is from in the message."""
    try:
        record = json.loads(value)
        stored_id = str(record["keyId"])
        check = base64.b64decode(str(record["check"]), validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataKeyError(f"the data key check value at {CHECK_KEY} is damaged") from exc
    try:
        opened = key.open(check, CHECK_KEY.encode())
    except DataKeyError:
        opened = b""
    if opened != _CHECK_PLAINTEXT:
        raise DataKeyError(
            f"the data key from {key.source} (id {key.key_id}) is not the key {whose} "
            f"secrets are encrypted with (id {stored_id}); every manager of a cluster needs "
            "the same data key file (--data-key-file): copy the one the first manager used"
        )
