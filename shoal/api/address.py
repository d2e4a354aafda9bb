"""``HOST:PORT`` addresses as users write them on command lines and in settings.

One parser for every side (managers' ``--listen``, agents' ``--metrics-listen``,
clients' ``--server``), so a bracketed IPv6 host or a missing port means the
same thing everywhere.
"""

from __future__ import annotations


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:7420"`` → ``("127.0.0.1", 7420)``; an empty host means every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


# What a client may be given for a manager, besides HOST:PORT.
_SCHEMES = ("http://", "https://", "grpc://", "grpcs://")


def manager_address(value: str, default_port: int) -> str:
    """A manager address as a user wrote it, made ``HOST:PORT`` (``ValueError`` says why not).

    ``localhost`` gets the default port; ``http://host:7420/`` (as copied from a
    browser or a URL-minded config) loses its scheme and path: shoal speaks gRPC
    on that port either way.
    """
    text = value.strip()
    lowered = text.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    else:
        if "://" in text:
            scheme = text.split("://")[0]
            raise ValueError(
                f"{value!r}: a manager address is HOST:PORT (or HOST), not a {scheme} URL"
            )
    text = text.split("/", 1)[0]
    if not text:
        raise ValueError(f"{value!r}: a manager address is HOST:PORT, e.g. 127.0.0.1:7420")
    if text.startswith("["):  # [::1] or [::1]:7420
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or str(default_port)
        host = f"[{host}]"
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port = f"[{text}]", str(default_port)
    else:
        host, _, port = text.partition(":")
        port = port or str(default_port)
    if not host or host == "[]":
        raise ValueError(f"{value!r}: the address names no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return f"{host}:{int(port)}"
