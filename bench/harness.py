"""Small helpers the benchmarks share (they run as scripts: ``python bench/NAME.py``)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now, so benchmarks can run side by side."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
