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
