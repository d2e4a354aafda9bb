"""A container's listener answers the zone itself and relays other names to the host's
name servers (a real upstream server on loopback here), so a container needs no other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import dns.message
import dns.rcode
import dns.rrset
import pytest

from shoal.discovery.dns import DnsListener, Resolver, open_listener
from shoal.discovery.forward import Forwarder
from shoal.discovery.perspective import Perspective
from tests.discovery.test_dns import NODE, answers, ask, fed


class Upstream(asyncio.DatagramProtocol):
    """A name server that knows ``example.test`` (and answers only if ``answering``)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answering = True
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        self.asked.append(query.question[0].name.to_text())
        if not self.answering or self.transport is None:
            return
        response = dns.message.make_response(query)
        if query.question[0].name.to_text() == "example.test.":
            response.answer.append(dns.rrset.from_text("example.test.", 30, "IN", "A", "192.0.2.7"))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    yield protocol, transport.get_extra_info("sockname")[1]
    transport.close()


@pytest.fixture
async def container_listener(upstream: tuple[Upstream, int]) -> AsyncIterator[DnsListener]:
    _, port = upstream
    served = await open_listener(
        Resolver(fed(), NODE),
        "127.0.0.1",
        0,
        Perspective.container("172.17.0.1"),
        forwarder=Forwarder([("127.0.0.1", port)], timeout=0.5),
    )
    yield served
    await served.aclose()


async def test_names_outside_the_zone_are_relayed(
    container_listener: DnsListener, upstream: tuple[Upstream, int]
) -> None:
    server, _ = upstream
    assert answers(await ask(container_listener, "example.test."), "A") == ["192.0.2.7"]
    missing = await ask(container_listener, "nope.test.")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    # The zone is answered here, never asked upstream (whose NXDOMAIN would be wrong).
    assert answers(await ask(container_listener, "web.shoal."), "A") == ["127.0.0.3", "172.17.0.1"]
    assert server.asked == ["example.test.", "nope.test."]


async def test_an_upstream_that_does_not_answer_is_servfail(
    container_listener: DnsListener, upstream: tuple[Upstream, int]
) -> None:
    server, _ = upstream
    server.answering = False
    assert (await ask(container_listener, "example.test.")).rcode() == dns.rcode.SERVFAIL


async def test_the_host_listener_relays_nothing() -> None:
    served = await open_listener(Resolver(fed(), NODE), "127.0.0.1", 0)
    try:
        assert (await ask(served, "example.test.")).rcode() == dns.rcode.REFUSED
    finally:
        await served.aclose()


def test_the_servers_come_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 2001:db8::53\nnameserver bogus\n")
    assert Forwarder.from_resolv_conf(conf).servers == [("127.0.0.53", 53), ("2001:db8::53", 53)]
    assert Forwarder.from_resolv_conf(tmp_path / "missing").servers == []
