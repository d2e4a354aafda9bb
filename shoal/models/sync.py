"""The Sync document (``kind: Sync``) and the apply-set record it shares with ``apply --prune``.

A Sync names a source of spec documents (a directory on the manager hosts or a
path in a git repository) that the leader keeps the cluster in line with
(``shoal.reconciler.sync``). Its ``status`` is written by the controller only;
whatever a user writes there is ignored on apply, as are the manager-written
fields of ``metadata``.

An ``ApplySet`` records what one named set of applies owns: ``shoal apply
--prune --set NAME`` and every Sync (set ``sync.NAME``) keep one under
``/applysets/<name>``. Pruning deletes members of the record that the new
apply no longer contains, so an object that no set owns is never pruned.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from shoal.models.base import Model
from shoal.models.secret import NAME as SECRET_NAME
from shoal.models.service import API_VERSION, DNS_LABEL, Metadata
from shoal.models.units import Duration

# Names of apply sets: a DNS label for sets named on the command line,
# ``sync.<name>`` for the set of a Sync and ``stack.<name>`` for a Compose
# stack (a dot cannot appear in a DNS label, so they never collide).
APPLY_SET_NAME = re.compile(r"^((sync|stack)\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MIN_INTERVAL = 1.0

HealthState = Literal["Healthy", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]


def sync_set_name(sync: str) -> str:
    """The apply set that records what Sync ``sync`` owns."""
    return f"sync.{sync}"


class ApplySetMember(Model):
    # A Sync applied with a set is pruned like a service (its services stay).
    kind: Literal["Service", "Sync"] = "Service"
    name: str


class ApplySet(Model):
    """What one apply set owns; kept at ``/applysets/<name>``."""

    name: str
    # Where the last apply of this set came from: a path, ``<stdin>``, or ``git URL@REF:PATH``.
    source: str = ""
    # The commit, or a digest of the documents applied.
    revision: str = ""
    members: list[ApplySetMember] = Field(default_factory=list)
    updated_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not APPLY_SET_NAME.match(value):
            raise ValueError(
                f"invalid apply set name {value!r}: use lower-case letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return value

    def owns(self, kind: str, name: str) -> bool:
        return any(m.kind == kind and m.name == name for m in self.members)


class GitSource(Model):
    url: str = Field(min_length=1)
    ref: str = "main"
    # The directory inside the repository to apply, relative to its root.
    path: str = "."
    # A shoal secret holding ``USERNAME:PASSWORD`` (or a token as the password)
    # for an ``https://`` or ``http://`` repository; see docs/gitops.md.
    secret_ref: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(https?|git|ssh|file)://\S+$", value) and not re.match(
            r"^[\w.-]+@[\w.-]+:\S+$", value
        ):
            raise ValueError(
                f"invalid git url {value!r}: use https://, http://, git://, ssh://, file:// "
                "or user@host:path"
            )
        return value

    @field_validator("secret_ref")
    @classmethod
    def _secret_name(cls, value: str | None) -> str | None:
        if value is not None and not SECRET_NAME.match(value):
            raise ValueError(f"invalid secret name {value!r}")
        return value

    @model_validator(mode="after")
    def _credentials_over_https(self) -> GitSource:
        if self.secret_ref is None:
            return self
        if self.url.startswith("http://") and not _loopback(urlsplit(self.url).hostname):
            raise ValueError(
                f"secretRef: {self.url!r} would send the login in clear text: use https:// "
                "(plain http:// is allowed to a loopback address only)"
            )
        if not self.url.startswith(("https://", "http://")):
            raise ValueError(
                "secretRef: credentials from a secret are given to https:// repositories "
                f"only, not {self.url!r} (ssh:// uses the manager's own ssh setup)"
            )
        return self

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if (
            not value
            or value.startswith("-")
            or ".." in value
            or re.search(r"[\s~^:?*\[\\]", value)
        ):
            raise ValueError(f"invalid git ref {value!r}: name a branch or a tag")
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p not in ("", ".")]
        if value.startswith("/") or ".." in parts:
            raise ValueError(
                f"invalid path {value!r}: a directory inside the repository, relative to its "
                "root, without '..'"
            )
        return "/".join(parts) or "."


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SyncSource(Model):
    """Exactly one of ``git`` and ``path`` (a directory on the manager hosts)."""

    git: GitSource | None = None
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(
                f"path must be an absolute directory on the manager hosts, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SyncSource:
        if (self.git is None) == (self.path is None):
            raise ValueError("give exactly one of 'git' and 'path'")
        return self

    def describe(self) -> str:
        if self.git is not None:
            return f"git {self.git.url}@{self.git.ref}:{self.git.path}"
        return f"directory {self.path}"


class SyncDependency(Model):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(f"invalid Sync name {value!r}")
        return value


class SyncSpec(Model):
    source: SyncSource
    # How often the source is fetched and the cluster compared with it.
    interval: Duration = 60.0
    # Delete services this Sync applied earlier whose documents are gone.
    prune: bool = False
    # Pruning every service the Sync owns needs this (an emptied source is more
    # often a mistake than a wish).
    allow_empty: bool = False
    # No fetch, no apply, no drift correction while true.
    suspend: bool = False
    # How long applied services may take to run their specs before the Sync is Degraded.
    timeout: Duration = 300.0
    # Syncs that must be Ready before this one applies.
    depends_on: list[SyncDependency] = Field(default_factory=list)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < MIN_INTERVAL:
            raise ValueError(f"interval must be at least 1s, got {value:g}s")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be longer than 0s")
        return value


class Condition(Model):
    type: Literal["Ready", "Reconciling", "Stalled"]
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: datetime | None = None


class SyncStatus(Model):
    """Written by the Sync controller; ignored when applied."""

    observed_generation: int | None = None
    last_applied_revision: str | None = None
    last_attempted_revision: str | None = None
    last_attempted_at: datetime | None = None
    # When the applied state last changed (an apply, a drift correction): the
    # timeout for health counts from here.
    last_applied_at: datetime | None = None
    # The last `shoal sync now` request handled (metadata.requestedAt).
    last_handled_request: datetime | None = None
    conditions: list[Condition] = Field(default_factory=list)
    health: HealthState | None = None
    health_message: str = ""
    inventory: list[str] = Field(default_factory=list)  # "service/web", sorted

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class SyncMetadata(Metadata):
    # Set by `shoal sync now`: fetch and apply at once instead of at the next interval.
    requested_at: datetime | None = None


class Sync(Model):
    api_version: Literal["shoal/v1"] = API_VERSION
    kind: Literal["Sync"] = "Sync"
    metadata: SyncMetadata
    spec: SyncSpec
    status: SyncStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name
