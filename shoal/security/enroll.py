"""Joining a cluster, the node's side: ``join`` once with a token, ``renew`` after.

The protocol and why it has a listener of its own are described in
``shoal.security.join``. This module is what agents import: it needs no store.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl

import grpc
import grpc.aio

from shoal.api.transport import CHANNEL_OPTIONS, Client, open_channel
from shoal.errors import ApiError, AuthError
from shoal.security.ca import CA_NAME, make_csr, new_key
from shoal.security.ca import key_pem as pem_of_key
from shoal.security.credentials import TlsIdentity
from shoal.security.tokens import parse_token

JOIN_SERVICE = "shoal.v1.Join"
CERTIFICATES_SERVICE = "shoal.v1.Certificates"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def fetch_presented_certificate(address: str, timeout: float = 5.0) -> bytes:
    """The DER certificate a TLS server presents, verifying nothing (blocking)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host, port = _split(address)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=CA_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise AuthError(f"the join listener at {address} presented no certificate")
    return der


async def _verified_channel(
    address: str, token: str, timeout: float
) -> tuple[bytes, grpc.aio.Channel]:
    """The CA the join listener presents, checked against the token's digest, and a
    channel to the listener that trusts exactly that CA."""
    parsed = parse_token(token)
    try:
        der = await asyncio.to_thread(fetch_presented_certificate, address, timeout)
    except OSError as exc:
        raise ApiError(
            "UNAVAILABLE",
            f"cannot reach the join listener at {address}: {exc} (is --join the manager's "
            "--join-listen address?)",
        ) from exc
    digest = hashlib.sha256(der).hexdigest()
    if digest != parsed.ca_digest:
        raise AuthError(
            f"refusing to join: the manager at {address} has CA {digest[:16]}…, but the token "
            f"is for CA {parsed.ca_digest[:16]}… (another cluster, or something in between)"
        )
    ca_pem = ssl.DER_cert_to_PEM_cert(der).encode()
    channel = grpc.aio.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", CA_NAME)],
    )
    return ca_pem, channel


async def _issue(
    channel: grpc.aio.Channel, ca_pem: bytes, token: str, node_id: str, timeout: float
) -> TlsIdentity:
    key = new_key()
    try:
        reply = await Client(channel, JOIN_SERVICE).call(
            "IssueCertificate",
            {"token": token.strip(), "nodeId": node_id, "csr": make_csr(key, node_id).decode()},
            timeout=timeout,
        )
    except ApiError as exc:
        if exc.code == "PERMISSION_DENIED":
            raise AuthError(exc.message) from exc
        raise
    return TlsIdentity(ca_pem, str(reply["cert"]).encode(), pem_of_key(key))


async def join(address: str, token: str, node_id: str, timeout: float = 10.0) -> TlsIdentity:
    """Join through the join listener at ``address``; see the module docstring."""
    ca_pem, channel = await _verified_channel(address, token, timeout)
    try:
        return await _issue(channel, ca_pem, token, node_id, timeout)
    finally:
        await channel.close()


async def join_many(
    address: str, token: str, node_ids: list[str], timeout: float = 30.0, concurrency: int = 32
) -> dict[str, TlsIdentity | ApiError | AuthError]:
    """Join several nodes at once (a simulated fleet): one CA check and one channel for
    all of them, ``concurrency`` certificate requests in flight. Each node still gets
    a key and a certificate of its own; a node whose request failed maps to its error."""
    ca_pem, channel = await _verified_channel(address, token, timeout)
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, TlsIdentity | ApiError | AuthError] = {}

    async def one(node_id: str) -> None:
        async with gate:
            try:
                results[node_id] = await _issue(channel, ca_pem, token, node_id, timeout)
            except (ApiError, AuthError) as exc:  # e.g. a name another node holds
                results[node_id] = exc

    try:
        await asyncio.gather(*(one(node_id) for node_id in node_ids))
    finally:
        await channel.close()
    return results


async def renew(address: str, identity: TlsIdentity, timeout: float = 10.0) -> TlsIdentity:
    """A fresh certificate for ``identity``'s holder, from the manager at ``address``."""
    key = new_key()
    channel = open_channel(address, identity)
    try:
        reply = await Client(channel, CERTIFICATES_SERVICE).call(
            "Renew", {"csr": make_csr(key, identity.info.common_name).decode()}, timeout=timeout
        )
    finally:
        await channel.close()
    return TlsIdentity(str(reply["ca"]).encode(), str(reply["cert"]).encode(), pem_of_key(key))
