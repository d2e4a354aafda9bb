"""Secrets and configs (Swarm's model): named, immutable blobs that tasks receive as files.

``shoal secret create NAME -f FILE`` and ``shoal config create`` store one; a
service template lists the ones its tasks get (``secrets:``, ``configs:``, each a
``FileReference``). Both are kept in the store sealed with the cluster's data
key (``shoal.security.datakey``), under ``/secrets/<name>`` and
``/configs/<name>``: the ``Secret`` and ``Config`` models below are those
records, and their ``sealed`` field is the only place the bytes are, encrypted.
API answers leave ``sealed`` out (``view``).

Immutable: a name's bytes never change; rotating means a new name and an
update of the services that use it (a rolling update). Configs may also be
written as spec documents (``ConfigDocument``, ``kind: Config``); secrets may
not, so their bytes never sit in a spec directory or a git repository.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, field_validator

from shoal.models.base import Model

MAX_SECRET_BYTES: Final = 500 * 1024
MAX_CONFIG_BYTES: Final = 1000 * 1024
# Docker's rule for secret and config names: letters, digits, '.', '_', '-', at most 64.
NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
# Where containers find their secrets (configs default to /<source>).
SECRETS_MOUNT: Final = "/run/secrets"


def check_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit, at most 64 characters"
        )
    return value


def _parse_mode(value: Any) -> Any:
    """File modes: an int (YAML reads ``0400`` as octal already) or an octal string."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise ValueError(f"invalid file mode {value!r}: use octal digits, e.g. 0400")
        return int(text, 8)
    return value


FileMode = Annotated[
    int,
    BeforeValidator(_parse_mode),
    Field(ge=0, le=0o777),
    PlainSerializer(lambda mode: f"{mode:04o}", return_type=str, when_used="json"),
]


class FileReference(Model):
    """One secret or config a task gets as a file, and how the file looks."""

    source: str
    # Secrets: a file name in /run/secrets (containers) or $SHOAL_SECRETS_DIR
    # (processes); configs: a path, absolute in a container, and under
    # $SHOAL_CONFIGS_DIR for processes. Default: the source's name.
    target: str | None = None
    mode: FileMode = 0o444
    # Default: the task's user for processes, 0 (root) in containers.
    uid: int | None = Field(default=None, ge=0, le=2**32 - 2)
    gid: int | None = Field(default=None, ge=0, le=2**32 - 2)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_name(value)


class SecretReference(FileReference):
    @field_validator("target")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ValueError(
                f"invalid target {value!r}: a secret's target is a file name "
                f"(it lands in {SECRETS_MOUNT}/ or $SHOAL_SECRETS_DIR/)"
            )
        return value

    @property
    def file_name(self) -> str:
        return self.target or self.source


class ConfigReference(FileReference):
    @field_validator("target")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = [p for p in value.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts) or "\0" in value:
            raise ValueError(
                f"invalid target {value!r}: a path such as /etc/app/app.conf, without '..'"
            )
        return value

    @property
    def container_path(self) -> str:
        return "/" + "/".join(p for p in (self.target or self.source).split("/") if p)

    @property
    def relative_path(self) -> str:
        """Where the file lands under $SHOAL_CONFIGS_DIR for a process."""
        return self.container_path.lstrip("/")


class FileMetadata(Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class _Stored(Model):
    api_version: Literal["shoal/v1"] = "shoal/v1"
    metadata: FileMetadata
    size: int = Field(ge=0)
    # base64 of the bytes sealed with the data key for this record's store key.
    sealed: str = Field(repr=False)

    @property
    def name(self) -> str:
        return self.metadata.name

    def view(self) -> dict[str, Any]:
        """What API answers show: everything but the sealed bytes."""
        wire = self.to_wire()
        wire.pop("sealed", None)
        return wire


class Secret(_Stored):
    kind: Literal["Secret"] = "Secret"


class Config(_Stored):
    kind: Literal["Config"] = "Config"


class ConfigDocument(Model):
    """A config written as a spec document (``kind: Config``): its text is in ``data``."""

    api_version: Literal["shoal/v1"] = "shoal/v1"
    kind: Literal["Config"] = "Config"
    metadata: FileMetadata
    data: str = Field(repr=False)

    @field_validator("data")
    @classmethod
    def _size(cls, value: str) -> str:
        size = len(value.encode())
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"a config holds at most 1000 KiB, this one is {size} bytes")
        return value

    @property
    def name(self) -> str:
        return self.metadata.name


def check_size(kind: str, size: int) -> None:
    """Swarm's limits: a secret 1 B to 500 KiB, a config 1 B to 1000 KiB."""
    limit = MAX_SECRET_BYTES if kind == "secret" else MAX_CONFIG_BYTES
    if size == 0:
        raise ValueError(f"a {kind} cannot be empty")
    if size > limit:
        raise ValueError(f"a {kind} holds at most {limit // 1024} KiB, this one is {size} bytes")
