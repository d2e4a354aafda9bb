"""A real manager (memory store, real gRPC with mutual TLS, the HTTP listener) and one
in-process agent with the ``sim`` runtime, for the HTTP layer's tests."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.agent.agent import AgentSettings, open_agent
from shoal.api.transport import CONTROL_SERVICE, Client, open_channel
from shoal.http.sessions import CSRF_HEADER
from shoal.manager.server import Manager, ManagerSettings, open_manager
from shoal.security.contexts import Context, load_bundle

NODE = "web-node"


@dataclass
class Web:
    manager: Manager
    admin: Context
    root: Path

    @property
    def url(self) -> str:
        assert self.manager.web.url is not None
        return self.manager.web.url

    async def control(
        self, method: str, request: dict[str, Any], as_: Context | None = None
    ) -> Any:
        channel = open_channel(self.manager.address, as_ or self.admin)
        try:
            return await Client(channel, CONTROL_SERVICE).call(method, request, timeout=10)
        finally:
            await channel.close()

    async def viewer(self, name: str = "vera") -> Context:
        bundle = await self.control("UserAdd", {"name": name, "role": "viewer"})
        return Context.from_bundle(bundle, "viewer bundle")

    async def browser(self, as_: Context | None = None) -> Browser:
        """A signed-in HTTP client: a login link from UiLogin, opened, and its Sign in
        button pressed (the form POSTed, from the listener's own origin, as a browser)."""
        link = await self.control("UiLogin", {}, as_)
        client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with client.get(link["url"], allow_redirects=False) as response:
            assert response.status == 200, await response.text()
            token = login_form_token(await response.text())
        async with client.post(
            f"{self.url}/login", data={"token": token}, headers={"Origin": self.url}
        ) as response:
            assert response.status == 200, await response.text()
            return Browser(client, self.url, page_token(await response.text()))

    async def apply(self, name: str, replicas: int, **spec: Any) -> None:
        doc = {
            "apiVersion": "shoal/v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "template": {"runtime": "sim", "command": ["work"]},
                **spec,
            },
        }
        await self.control("Apply", {"documents": [doc]})

    async def running(self, service: str, count: int, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tasks = (await self.control("Get", {"kind": "tasks", "service": service}))["items"]
            up = [t for t in tasks if t["status"]["state"] == "running"]
            if len(up) == count == len(tasks):
                return
            assert loop.time() < deadline, f"{service}: {len(up)} of {count} running"
            await asyncio.sleep(0.05)


def login_form_token(login_page: str) -> str:
    """The login token in the page a link opens (its form's hidden field)."""
    found = re.search(r'<input type="hidden" name="token" value="([^"]+)">', login_page)
    assert found, login_page
    return html.unescape(found.group(1))


def page_token(signed_in_page: str) -> str:
    """The page token in the page ``/login`` answers with (what signin.js keeps)."""
    found = re.search(r'<meta name="shoal-page-token" content="([^"]+)">', signed_in_page)
    assert found, signed_in_page
    return html.unescape(found.group(1))


@dataclass
class Browser:
    client: aiohttp.ClientSession
    url: str
    csrf: str = ""

    async def get(self, path: str, csrf: bool = True) -> tuple[int, Any]:
        headers = {CSRF_HEADER: self.csrf} if csrf else {}
        async with self.client.get(self.url + path, headers=headers) as response:
            return response.status, await response.json()

    async def post(self, path: str, body: Any, csrf: bool = True) -> tuple[int, Any]:
        headers = {CSRF_HEADER: self.csrf} if csrf else {}
        async with self.client.post(self.url + path, json=body, headers=headers) as response:
            return response.status, await response.json()

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        heartbeat_period=0.5,
    )
    async with open_manager(settings) as manager:
        agent = AgentSettings(
            managers=[manager.address],
            token="",
            identity=await manager.security.local_node(NODE),
            state_dir=tmp_path / "agent",
            name=NODE,
            runtimes=frozenset({"sim"}),
        )
        async with open_agent(agent):
            yield Web(manager, load_bundle(manager.admin_bundle), tmp_path)


@pytest.fixture
async def admin(web: Web) -> AsyncIterator[Browser]:
    browser = await web.browser()
    yield browser
    await browser.close()
