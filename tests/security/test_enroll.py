"""Joining over the network: a real manager (memory store) and its join listener."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.errors import AuthError
from shoal.manager.server import Manager, ManagerSettings, open_manager
from shoal.security.credentials import TlsIdentity
from shoal.security.enroll import join, join_many
from shoal.security.tokens import new_token


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Manager]:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
    )
    async with open_manager(settings) as running:
        yield running


async def test_a_fleet_joins_at_once_each_node_with_its_own_certificate(manager: Manager) -> None:
    token = manager.security.state.tokens["worker"]
    names = [f"fleet-{i:02d}" for i in range(40)]
    joined = await join_many(manager.join_address, token, names)
    identities = [joined[name] for name in names]
    assert all(isinstance(i, TlsIdentity) for i in identities)
    certs = [i for i in identities if isinstance(i, TlsIdentity)]
    assert [c.info.common_name for c in certs] == names
    assert {c.info.role for c in certs} == {"worker"}
    assert len({c.key_pem for c in certs}) == len(names)  # a key of its own each
    assert set(names) <= set(manager.security.state.nodes)


async def test_a_held_name_is_refused_for_that_node_only(manager: Manager) -> None:
    token = manager.security.state.tokens["worker"]
    await join(manager.join_address, token, "taken")
    joined = await join_many(manager.join_address, token, ["taken", "free"])
    assert isinstance(joined["free"], TlsIdentity)
    refused = joined["taken"]
    assert isinstance(refused, AuthError)
    assert "already joined" in str(refused)


async def test_a_token_for_another_ca_sends_nothing(manager: Manager) -> None:
    other = str(new_token("0" * 64))
    with pytest.raises(AuthError, match="refusing to join"):
        await join_many(manager.join_address, other, ["intruder"])
    assert "intruder" not in manager.security.state.nodes
