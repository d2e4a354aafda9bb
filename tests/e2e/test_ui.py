"""The web UI in a real browser: Debian's headless Chromium, driven by Playwright.

A real cluster (manager with ``--http-listen`` and one agent, as processes) runs
process tasks; a user signs in with the link ``shoal ui`` prints and works the
pages as anyone would. What happened is counted from the outside: task processes
in ``/proc`` (each task is a wrapper plus its command, so distinct
``SHOAL_TASK_ID``s), the store through the Control API.

``SHOAL_UI_SCREENSHOTS=DIR`` also saves the screenshots of the main pages there
(``docs/images/`` holds the ones docs/ui.md shows).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.http.sessions import COOKIE
from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    free_port,
    processes_with_env,
    shoal_cmd,
    wait_for,
)
from tests.engines import missing

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SERVICE = "storefront"
# Prints a line every second, so the logs pane has something to follow.
COMMAND = ["sh", "-c", 'while true; do echo "slot $SHOAL_TASK_SLOT says hello"; sleep 1; done']


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("ui")
    with cluster_at(root, ["--http-listen", f"127.0.0.1:{free_port()}"]) as running:
        running.start_agent("n1")
        running.apply(running.service(SERVICE, COMMAND, replicas=2))
        running.wait_running(SERVICE, 2)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        missing("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing("chromium", f"playwright is not installed ({exc})")
    with sync_playwright() as playwright:
        # Root in a container: Chromium's sandbox needs user namespaces it may not have.
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


def call(cluster: Cluster, method: str, request: dict[str, Any]) -> dict[str, Any]:
    """``cluster.call`` on a thread of its own: Playwright's sync API holds this one's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(cluster.call, method, request).result()


def running(cluster: Cluster, service: str) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(cluster.running, service).result()


def sign_in(browser: Any, link: str) -> Any:
    """A fresh browser context that opened ``link``: a signed-in page on the UI."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(link)
    page.click("#sign-in")
    page.wait_for_selector("#who:not(:empty)")
    return page


def login_link(cluster: Cluster, *args: str) -> str:
    link = cluster.cli("ui", *args).stdout.strip()
    assert link.startswith("http://127.0.0.1:") and "/login?token=" in link, link
    return link


def shown_tasks(page: Any) -> dict[str, str]:
    """Task id → state, as the service page shows them."""
    rows = page.query_selector_all("tr[data-task]")
    return {row.get_attribute("data-task"): row.get_attribute("data-state") for row in rows}


@pytest.fixture(scope="module")
def admin_page(cluster: Cluster, browser: Any) -> Any:
    page = sign_in(browser, login_link(cluster))
    assert page.inner_text("#who") == "admin (admin)"
    return page


def test_sign_in_and_the_services_page_lists_the_service(cluster: Cluster, admin_page: Any) -> None:
    page = admin_page
    assert page.url.endswith("/")  # the link's token is gone from the address bar
    row = page.wait_for_selector(f"tr[data-service-row={SERVICE}]")
    page.wait_for_selector(f"td[data-replicas-shown={SERVICE}]:has-text('2 / 2')")
    assert "2 / 2" in row.inner_text()
    assert page.query_selector(f"button[data-action=scale][data-service={SERVICE}]") is not None
    # A link previewer fetching the link uses nothing up: the page only offers a button.
    link = login_link(cluster)
    with urllib.request.urlopen(link, timeout=10) as previewed:
        assert previewed.status == 200 and "Set-Cookie" not in previewed.headers
    # Login CSRF: a page of another origin posting this link's form signs nobody in.
    elsewhere = page.context.browser.new_context().new_page()
    base, token = link.split("/login?token=")
    elsewhere.route(
        "http://elsewhere.test/**",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{base}/login"><input name="token" '
            f'value="{token}"><button id="go">go</button></form>',
        ),
    )
    elsewhere.goto("http://elsewhere.test/")
    with elsewhere.expect_navigation():
        elsewhere.click("#go")
    assert "another page" in elsewhere.inner_text("body")
    assert not [c for c in elsewhere.context.cookies() if c["name"] == COOKIE]
    elsewhere.context.close()
    # The link still works, once: opened again after that, it signs nobody in.
    first = page.context.browser.new_context().new_page()
    assert first.goto(link).status == 200
    first.click("#sign-in")
    first.wait_for_selector("#who:not(:empty)")
    second = page.context.browser.new_context().new_page()
    response = second.goto(link)
    assert response is not None and response.status == 401
    first.context.close()
    second.context.close()
    # The session cookie alone, as another web server on this host would receive it
    # (cookies ignore ports): refused for reads and actions alike.
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    base = page.url.split("#")[0].rstrip("/")
    for method, path, body, code in (
        ("GET", "/api/v1/services", None, 401),
        ("POST", f"/api/v1/services/{SERVICE}/scale", b'{"replicas": 9}', 403),
    ):
        request = urllib.request.Request(
            base + path,
            data=body,
            method=method,
            headers={"Cookie": f"{COOKIE}={cookie['value']}", "Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == code, (method, path)


def test_a_task_killed_by_hand_shows_failed_and_replaced_without_reloading(
    cluster: Cluster, admin_page: Any
) -> None:
    page = admin_page
    page.goto(page.url.split("#")[0] + f"#/services/{SERVICE}")
    page.wait_for_selector("tr[data-task][data-state=running]")
    wait_for(lambda: list(shown_tasks(page).values()).count("running") == 2, 10, "two running")
    page.evaluate("window.__notReloaded = true")
    victim = running(cluster, SERVICE)[0]
    pid = victim["status"]["pid"]
    assert pid in in_process_table_of(victim["id"])
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        shown = shown_tasks(page)
        running = [t for t, s in shown.items() if s == "running" and t != victim["id"]]
        return shown.get(victim["id"]) == "failed" and len(running) == 2

    wait_for(replaced, 30, "the killed task shown failed and its replacement running")
    assert page.evaluate("window.__notReloaded") is True
    # The logs pane follows the service: the replacement's lines arrive too.
    wait_for(lambda: "says hello" in page.inner_text("#logs"), 15, "log lines in the page")
    # With timestamps, each line shows when it was written (RFC 3339, from the manager).
    assert page.query_selector("#logs .time") is None
    page.check("#log-times")
    stamp = page.wait_for_selector("#logs .time", timeout=15_000)
    assert stamp is not None
    text = (stamp.text_content() or "").strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text


def in_process_table_of(task_id: str) -> set[int]:
    return set(processes_with_env("SHOAL_TASK_ID", task_id))


def task_processes(cluster: Cluster) -> set[str]:
    """Distinct tasks of SERVICE with a live process, of this test's cluster only."""
    found = processes_with_env("E2E_RUN", str(cluster.root)).values()
    return {env["SHOAL_TASK_ID"] for env in found if env.get("SHOAL_SERVICE") == SERVICE}


def test_an_admin_scales_from_the_ui_and_the_processes_follow(
    cluster: Cluster, admin_page: Any
) -> None:
    page = admin_page
    page.goto(page.url.split("#")[0] + "#/services")
    page.fill(f"input[data-replicas={SERVICE}]", "4")
    page.click(f"button[data-action=scale][data-service={SERVICE}]")
    wait_for(lambda: len(task_processes(cluster)) == 4, 30, "4 task processes in /proc")
    page.wait_for_selector(f"td[data-replicas-shown={SERVICE}]:has-text('4 / 4')", timeout=20_000)
    assert (
        call(cluster, "Get", {"kind": "services", "name": SERVICE})["items"][0]["spec"]["replicas"]
        == 4
    )


def test_a_viewer_sees_no_actions_and_the_api_refuses_its_calls(
    cluster: Cluster, browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "vera.yaml"
    cluster.cli("user", "add", "vera", "--role", "viewer", "-o", str(bundle))
    monkeypatch.setenv("SHOAL_CONFIG", str(tmp_path / "config.yaml"))
    imported = subprocess.run(
        shoal_cmd("context", "import", str(bundle), "--name", "vera"),
        env=cluster.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    page = sign_in(browser, login_link(cluster, "--context", "vera"))
    assert page.inner_text("#who") == "vera (viewer)"
    page.wait_for_selector(f"tr[data-service-row={SERVICE}]")
    assert page.query_selector_all("button[data-action]") == []
    assert page.query_selector_all("input[data-replicas]") == []
    page.goto(page.url.split("#")[0] + "#/nodes")
    page.wait_for_selector("tr[data-node=n1]")
    assert page.query_selector_all("button[data-action]") == []
    replicas = call(cluster, "Get", {"kind": "services", "name": SERVICE})["items"][0]["spec"][
        "replicas"
    ]
    # The buttons are only hidden; the API is what refuses (with the session's page token).
    answer = page.evaluate(
        """async (name) => {
            const token = localStorage.getItem('shoal.pageToken');
            const response = await fetch(`/api/v1/services/${name}/scale`, {
                method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-Shoal-CSRF': token},
                body: JSON.stringify({replicas: 9}),
            });
            return {status: response.status, body: await response.json()};
        }""",
        SERVICE,
    )
    assert answer["status"] == 403
    assert answer["body"]["error"]["code"] == "PERMISSION_DENIED"
    after = call(cluster, "Get", {"kind": "services", "name": SERVICE})["items"][0]["spec"]
    assert after["replicas"] == replicas
    assert len(task_processes(cluster)) == replicas


def test_an_admin_restarts_from_the_ui_and_sees_the_rollout_with_screenshots(
    cluster: Cluster, admin_page: Any, tmp_path: Path
) -> None:
    page = admin_page
    base = page.url.split("#")[0]
    page.goto(base + "#/services")
    before = task_processes(cluster)
    page.click(f"button[data-action=restart][data-service={SERVICE}]")
    page.wait_for_selector(f"tr[data-service-row={SERVICE}] .rollout")
    update = call(cluster, "Get", {"kind": "services", "name": SERVICE})["items"][0]["status"][
        "update"
    ]
    assert update["state"] in ("updating", "completed")
    # A rolling restart replaces the slots one by one: a new task's process appears.
    wait_for(lambda: task_processes(cluster) - before, 30, "a restarted slot's new process")
    shots = {
        "ui-services.png": ("#/services", f"tr[data-service-row={SERVICE}]"),
        "ui-service.png": (f"#/services/{SERVICE}", "tr[data-task]"),
        "ui-nodes.png": ("#/nodes", "tr[data-node=n1]"),
        "ui-events.png": ("#/events", "#event-list li"),
    }
    for name, (route, ready) in shots.items():
        page.goto(base + route)
        page.wait_for_selector(ready)
        if name == "ui-service.png":
            wait_for(lambda: "says hello" in page.inner_text("#logs"), 15, "log lines")
        page.screenshot(path=str(tmp_path / name), full_page=True)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("SHOAL_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in shots:
            shutil.copy(tmp_path / name, Path(target) / name)


def test_an_admin_drains_the_node_and_makes_it_active_again(
    cluster: Cluster, admin_page: Any
) -> None:
    page = admin_page
    page.goto(page.url.split("#")[0] + "#/nodes")
    page.click("button[data-action=drain][data-node=n1]")
    # Its tasks stop (there is no other node to move them to) ...
    wait_for(lambda: not task_processes(cluster), 40, "the drained node's task processes gone")
    node = call(cluster, "Get", {"kind": "nodes", "name": "n1"})["items"][0]
    assert node["spec"]["availability"] == "drain"
    # ... and come back when it is active again.
    page.click("button[data-action=undrain][data-node=n1]", timeout=20_000)
    wait_for(lambda: len(task_processes(cluster)) == 4, 40, "4 task processes again")
