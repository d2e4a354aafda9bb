"""Fixtures for the runtime conformance suite.

Every runtime runs the same tests: add it to ``RUNTIMES`` (with marks to skip it
where its engine is missing) and ``runtime`` / ``new_runtime`` build it through
the entry-point registry, so discovery is exercised too. A test that only makes
sense for one runtime overrides ``runtime_name`` with its own parametrize.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import ShoalError
from shoal.runtimes.base import Runtime, RuntimeSettings
from shoal.runtimes.registry import available_runtime_classes
from tests.engines import (
    ENGINES,
    engines_required,
    ensure_test_image,
    missing,
    remove_node_containers,
)

RUNTIMES = [
    pytest.param("process", id="process"),
    pytest.param("docker", id="docker"),
    pytest.param("podman", id="podman"),
]


@pytest.fixture(params=RUNTIMES)
def runtime_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def settings(tmp_path: Path, runtime_name: str) -> Iterator[RuntimeSettings]:
    # A node name of its own per test: container runtimes find their tasks by it.
    node = f"node-{secrets.token_hex(4)}"
    if runtime_name in ENGINES:
        ensure_test_image(runtime_name)
    yield RuntimeSettings(state_dir=tmp_path / "state", node_name=node)
    if runtime_name in ENGINES:
        remove_node_containers(runtime_name, node)


@pytest.fixture
async def new_runtime(
    runtime_name: str, settings: RuntimeSettings
) -> AsyncIterator[Callable[..., Runtime]]:
    """Build a runtime on the test's state dir; a second call is an agent restart."""
    runtime_class = available_runtime_classes()[runtime_name]
    made: list[Runtime] = []

    def make(**overrides: Any) -> Runtime:
        runtime = runtime_class(dataclasses.replace(settings, **overrides))
        made.append(runtime)
        return runtime

    yield make

    # Leave nothing running, whatever the test did.
    for runtime in made:
        for handle in await runtime.recover():
            with contextlib.suppress(ShoalError):
                await runtime.stop(handle, "SIGKILL", 0.0)
    for runtime in made:
        await runtime.aclose()


@pytest.fixture
async def runtime(new_runtime: Callable[..., Runtime]) -> Runtime:
    built = new_runtime()
    info = await built.describe()
    if not info.available and info.name in ENGINES:
        missing(info.name, info.message)
    if not info.available:
        # ``process`` and ``sim`` need no engine: when they do not work, that is
        # a failure wherever missing runtimes must not pass quietly (CI).
        message = f"runtime {info.name} is not available here: {info.message}"
        if engines_required():
            pytest.fail(f"{message} (SHOAL_REQUIRE_ENGINES is set)", pytrace=False)
        pytest.skip(message)
    return built
