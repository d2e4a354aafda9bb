"""Manager addresses as users type them: ``localhost``, URLs, IPv6, mistakes."""

from __future__ import annotations

import pytest

from shoal.api.address import manager_address


@pytest.mark.parametrize(
    ("typed", "address"),
    [
        pytest.param("127.0.0.1:7420", "127.0.0.1:7420", id="host-port"),
        pytest.param("localhost", "localhost:7420", id="no-port"),
        pytest.param("http://10.0.0.1:7500/", "10.0.0.1:7500", id="http-url"),
        pytest.param("HTTPS://manager.example", "manager.example:7420", id="https-no-port"),
        pytest.param("[::1]", "[::1]:7420", id="ipv6-bracketed"),
        pytest.param("[::1]:7500", "[::1]:7500", id="ipv6-port"),
        pytest.param("::1", "[::1]:7420", id="ipv6-bare"),
        pytest.param(" m1:7420 ", "m1:7420", id="spaces"),
    ],
)
def test_addresses_users_type_are_understood(typed: str, address: str) -> None:
    assert manager_address(typed, 7420) == address


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        pytest.param("ftp://m1", "not a ftp URL", id="other-scheme"),
        pytest.param("m1:http", "port must be a number", id="port-word"),
        pytest.param("m1:70000", "port must be a number from 1 to 65535", id="port-range"),
        pytest.param(":7420", "names no host", id="no-host"),
        pytest.param("", "HOST:PORT", id="empty"),
    ],
)
def test_wrong_addresses_say_why(typed: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        manager_address(typed, 7420)
