"""The join service and the security state on the memory store: tokens, names, revocation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shoal.errors import AuthError, DataKeyError
from shoal.security.ca import make_csr, new_key, read_cert
from shoal.security.datakey import DataKey
from shoal.security.join import JoinService
from shoal.security.state import SecurityState
from shoal.store import MemoryStore


async def joined(service: JoinService, token: str, name: str) -> dict[str, Any]:
    request = {"token": token, "nodeId": name, "csr": make_csr(new_key(), name).decode()}
    return await service.issue(request, None)  # type: ignore[arg-type]


@pytest.fixture
async def service() -> JoinService:
    state = SecurityState(MemoryStore(), DataKey.generate())
    ca = await state.bootstrap("c1")
    await state.start()
    return JoinService(ca, state, timedelta(hours=1))


async def test_the_token_decides_the_role(service: JoinService) -> None:
    worker = await joined(service, service.state.tokens["worker"], "w1")
    manager = await joined(service, service.state.tokens["manager"], "m1")
    assert read_cert(worker["cert"].encode()).role == "worker"
    assert read_cert(manager["cert"].encode()).role == "manager"
    assert worker["ca"] == service.ca.cert_pem.decode()


async def test_wrong_and_rotated_tokens_are_refused(service: JoinService) -> None:
    old = service.state.tokens["worker"]
    with pytest.raises(AuthError, match="join token refused"):
        await joined(service, old[:-1] + ("0" if old[-1] != "0" else "1"), "w1")
    new = await service.state.rotate_token("worker", service.ca.digest)
    with pytest.raises(AuthError, match="join token refused"):
        await joined(service, old, "w2")
    await joined(service, new, "w2")


async def test_a_name_is_held_until_the_node_is_removed(service: JoinService) -> None:
    token = service.state.tokens["worker"]
    first = await joined(service, token, "n1")
    with pytest.raises(AuthError, match="cannot take another node's name"):
        await joined(service, token, "n1")
    await service.state.remove("node", "n1")
    old = read_cert(first["cert"].encode())
    assert service.state.is_revoked("node", "n1", old.issued_at)
    again = read_cert((await joined(service, token, "n1"))["cert"].encode())
    assert not service.state.is_revoked("node", "n1", again.issued_at)


async def test_bad_requests_name_the_field(service: JoinService) -> None:
    with pytest.raises(ValueError, match="nodeId"):
        await joined(service, service.state.tokens["worker"], "../etc")
    with pytest.raises(ValueError, match="token"):
        await service.issue({"nodeId": "n1", "csr": "x"}, None)  # type: ignore[arg-type]


async def test_another_data_key_cannot_open_the_ca() -> None:
    store = MemoryStore()
    await SecurityState(store, DataKey.generate()).bootstrap("c1")
    with pytest.raises(DataKeyError, match="--data-key"):
        await SecurityState(store, DataKey.generate()).bootstrap("c1")
