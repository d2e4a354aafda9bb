"""Credential bundles and contexts: how the CLI knows which cluster, as whom.

A **bundle** is one YAML file holding everything a client needs:

    apiVersion: shoal/v1
    kind: Credentials
    name: local            # the context name it gets when imported
    cluster: <cluster id>
    user: alice
    role: admin | viewer
    servers: [10.0.0.1:7420, 10.0.0.2:7420]   # every manager
    ca: PEM     cert: PEM     key: PEM

``shoal up`` and ``shoal manager`` write one for user ``admin`` into their state
dir (``admin.yaml``, mode 0600); ``shoal user add NAME`` makes one for someone
else. A **context** is a bundle kept in the config file (``$SHOAL_CONFIG``, else
``$XDG_CONFIG_HOME/shoal/config.yaml``, else ``~/.config/shoal/config.yaml``,
mode 0600) under a name, one of them current.

Both are YAML to the reader, and shoal writes them as JSON (a subset of YAML):
every command reads one, and the standard library's ``json`` is already loaded
where PyYAML would take ~15 ms to import, a tenth of ``shoal get``'s budget. A
file written by hand, or by an older shoal, is read as YAML.

The CLI picks its credentials in this order (``resolve``):

1. ``--context NAME``;
2. the bundle of a local cluster in ``$SHOAL_STATE_DIR`` when that is set;
3. the config file's current context;
4. the bundle of a local cluster in the default state dir.

Addresses: ``--server``/``$SHOAL_SERVER`` (comma lists) when given; else, for a
local bundle, the live endpoint file's address first, then the bundle's servers;
else the context's servers. The client tries them in order (``shoal.api.client``).

This module imports nothing heavy: every CLI invocation goes through it.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

from shoal.api.address import manager_address
from shoal.errors import ShoalError
from shoal.paths import MANAGER_SUBDIR, default_state_dir, endpoint_candidates

TYPE_CHECKING = False  # not from typing: every command loads this module (see Context)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, NamedTuple

ADMIN_BUNDLE = "admin.yaml"


class CredentialsError(ShoalError):
    """No usable credentials, or a bundle or config file that cannot be read."""


# A named tuple, not a dataclass: importing dataclasses (inspect, ast, dis) would cost
# every command ~15 ms, a tenth of its budget; and collections' namedtuple, not
# typing's NamedTuple, which loads typing and compiles each field's annotation (~8 ms).
if TYPE_CHECKING:

    class _Fields(NamedTuple):
        name: str
        servers: list[str]
        ca_pem: bytes
        cert_pem: bytes
        key_pem: bytes
        user: str = ""
        role: str = ""
        cluster: str = ""

else:
    _Fields = namedtuple(
        "_Fields",
        ["name", "servers", "ca_pem", "cert_pem", "key_pem", "user", "role", "cluster"],
        defaults=("", "", ""),
    )


class Context(_Fields):
    """Credentials and manager addresses of one cluster (``TlsCredentials`` for a channel)."""

    __slots__ = ()

    def __repr__(self) -> str:  # never the key
        return f"Context(name={self.name!r}, servers={self.servers!r}, user={self.user!r})"

    @classmethod
    def from_bundle(cls, data: Any, source: str) -> Context:
        if not isinstance(data, dict):
            raise CredentialsError(f"{source}: not a shoal credential bundle")
        missing = [k for k in ("ca", "cert", "key") if not isinstance(data.get(k), str)]
        if missing:
            raise CredentialsError(f"{source}: missing {', '.join(missing)} (PEM text)")
        servers = data.get("servers") or []
        if not isinstance(servers, list):
            raise CredentialsError(f"{source}: servers: must be a list of HOST:PORT")
        return cls(
            name=str(data.get("name") or data.get("cluster") or "default"),
            servers=[str(s) for s in servers],
            ca_pem=str(data["ca"]).encode(),
            cert_pem=str(data["cert"]).encode(),
            key_pem=str(data["key"]).encode(),
            user=str(data.get("user", "")),
            role=str(data.get("role", "")),
            cluster=str(data.get("cluster", "")),
        )

    def to_bundle(self) -> dict[str, Any]:
        return {
            "apiVersion": "shoal/v1",
            "kind": "Credentials",
            "name": self.name,
            "cluster": self.cluster,
            "user": self.user,
            "role": self.role,
            "servers": list(self.servers),
            "ca": self.ca_pem.decode(),
            "cert": self.cert_pem.decode(),
            "key": self.key_pem.decode(),
        }


def load_bundle(path: Path) -> Context:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    return Context.from_bundle(parse_text(text, str(path)), str(path))


def parse_text(text: str, source: str) -> Any:
    """A bundle's or the config file's content: JSON as shoal writes it, else YAML."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CredentialsError(f"{source}: not YAML ({exc})") from exc


def dump_text(data: Mapping[str, Any]) -> bytes:
    """How shoal writes a bundle or the config file (see the module docstring)."""
    return (json.dumps(data, indent=2) + "\n").encode()


def bundle_candidates(state_dir: Path) -> list[Path]:
    return [state_dir / ADMIN_BUNDLE, state_dir / MANAGER_SUBDIR / ADMIN_BUNDLE]


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SHOAL_CONFIG"):
        return Path(env["SHOAL_CONFIG"]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "shoal" / "config.yaml"


class Config:
    """The contexts file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: str | None = None
        self.contexts: dict[str, Context] = {}

    @classmethod
    def load(cls, path: Path) -> Config:
        config = cls(path)
        if not path.exists():
            return config
        try:
            text = path.read_text()
        except OSError as exc:
            raise CredentialsError(f"cannot read the shoal config {path}: {exc}") from exc
        data = parse_text(text, f"the shoal config {path}") or {}
        if not isinstance(data, dict):
            raise CredentialsError(f"{path}: not a shoal config file")
        config.current = data.get("current")
        for index, raw in enumerate(data.get("contexts") or []):
            context = Context.from_bundle(raw, f"{path}: contexts[{index}]")
            config.contexts[context.name] = context
        return config

    def save(self) -> None:
        from shoal.security.credentials import write_private

        data = {
            "current": self.current,
            "contexts": [c.to_bundle() for c in self.contexts.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, dump_text(data))


def _live_endpoint(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("address"), str):
        return None
    pid = data.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return str(data["address"])


def live_endpoints(state_dir: Path) -> list[str]:
    """Addresses a live ``shoal up``/``shoal manager`` with this state dir announced."""
    return [a for a in map(_live_endpoint, endpoint_candidates(state_dir)) if a]


def _local(state_dir: Path) -> Context | None:
    for path in bundle_candidates(state_dir):
        if path.exists():
            context = load_bundle(path)
            live = live_endpoints(state_dir)
            servers = list(dict.fromkeys([*live, *context.servers]))
            return context._replace(servers=servers)
    return None


DEFAULT_PORT = 7420


def split_servers(text: str) -> list[str]:
    """``--server``/``$SHOAL_SERVER``: a comma list of managers as users type them
    (``localhost``, ``http://host:7420/``, ``[::1]``), each made ``HOST:PORT``."""
    try:
        return [manager_address(part, DEFAULT_PORT) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise CredentialsError(f"--server: {exc}") from exc


def resolve(
    server: str | None = None,
    context: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Context:
    """The credentials and addresses to use; see the module docstring for the order."""
    env = os.environ if env is None else env
    chosen: Context | None = None
    if context:
        config = Config.load(config_path(env))
        if context not in config.contexts:
            known = ", ".join(sorted(config.contexts)) or "none"
            raise CredentialsError(
                f"no context named {context!r} in {config.path} (known: {known}); "
                "add one with `shoal context import FILE`"
            )
        chosen = config.contexts[context]
    if chosen is None and env.get("SHOAL_STATE_DIR"):
        chosen = _local(default_state_dir(env))
    if chosen is None:
        config = Config.load(config_path(env))
        if config.current and config.current in config.contexts:
            chosen = config.contexts[config.current]
    if chosen is None:
        chosen = _local(default_state_dir(env))
    if chosen is None:
        raise CredentialsError(
            "no credentials for a shoal cluster: run `shoal up` (the CLI then finds its "
            "admin bundle in the state dir, or set SHOAL_STATE_DIR), or import a bundle "
            "with `shoal context import FILE`"
        )
    explicit = server or env.get("SHOAL_SERVER")
    if explicit:
        chosen = chosen._replace(servers=split_servers(explicit))
    if not chosen.servers:
        raise CredentialsError(f"context {chosen.name!r} lists no manager addresses")
    return chosen
