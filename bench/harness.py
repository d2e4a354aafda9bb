"""Small helpers the benchmarks share (they run as scripts: ``python bench/NAME.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.aio

from shoal.api.transport import CONTROL_SERVICE, Client, open_channel
from shoal.errors import ApiError
from shoal.security.contexts import CredentialsError, resolve


def bench_channel(address: str, timeout: float = 30.0) -> grpc.aio.Channel:
    """A channel to ``address`` with the admin bundle of the shoal whose state dir is
    ``$SHOAL_STATE_DIR`` (each benchmark points it at the cluster it started), waiting
    for the manager to have written the bundle."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_channel(address, resolve(address))
        except CredentialsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def free_port() -> int:
    """A loopback port nothing listens on now, so benchmarks can run side by side."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(
    address: str, server: subprocess.Popen[bytes], runtime: str, timeout: float = 30
) -> bool:
    """Wait until ``shoal up`` at ``address`` has a ready node where ``runtime`` works."""
    channel = bench_channel(address)
    client = Client(channel, CONTROL_SERVICE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                nodes = (await client.call("Get", {"kind": "nodes"}, timeout=2))["items"]
                if any(
                    n["status"]["state"] == "ready"
                    and any(
                        r["name"] == runtime and r["available"]
                        for r in n["description"]["runtimes"]
                    )
                    for n in nodes
                ):
                    return True
            except ApiError:
                pass
            await asyncio.sleep(0.2)
        return False
    finally:
        await channel.close()


@contextlib.contextmanager
def open_shoal_up(port: int, runtime: str) -> Iterator[str]:
    """A real ``shoal up`` in a temporary state dir, ready with ``runtime``: its address.

    Exits the benchmark with the tail of shoal's log when it does not become ready.
    """
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as state:
        os.environ["SHOAL_STATE_DIR"] = state  # bench_channel finds its admin bundle
        log_path = Path(state) / "shoal.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "shoal", "up", "--state-dir", state, "--listen", address],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if not asyncio.run(wait_ready(address, server, runtime)):
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise SystemExit(f"shoal up did not become ready with the {runtime} runtime")
            yield address
        finally:
            server.terminate()
            server.wait(30)
