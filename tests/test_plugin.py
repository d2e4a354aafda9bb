"""A third-party runtime plugin, installed as a real package and found by its entry point.

``examples/shoal-lowprio-runtime`` is pip-installed into a directory of its
own, put on ``sys.path``, and then discovered exactly as an agent discovers
runtimes: through the ``shoal.runtimes`` entry-point group. Its task really
runs at nice 19.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskLaunch
from shoal.runtimes.registry import available_runtime_classes, runtime_catalogue

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "shoal-lowprio-runtime"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            # Build with this environment's setuptools (the dev extra): no index needed.
            "--no-build-isolation",
            "--target",
            str(target),
            str(PLUGIN),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(target))
    yield target
    sys.modules.pop("shoal_lowprio", None)


async def test_installed_plugin_is_discovered_and_runs_tasks(
    installed: Path, tmp_path: Path
) -> None:
    classes = available_runtime_classes()
    assert "lowprio" in classes
    assert runtime_catalogue(classes)["lowprio"] is False  # a process runtime
    runtime = classes["lowprio"](RuntimeSettings(state_dir=tmp_path / "state", node_name="n1"))
    assert (await runtime.describe()).available

    template = TaskTemplate.model_validate(
        {
            "runtime": "lowprio",
            "command": ["sh", "-c", 'set -- $(cat /proc/$$/stat); echo "nice=${19}"'],
        }
    )
    handle = await runtime.start(TaskLaunch("t1", "svc", 1, template, {"SHOAL_TASK_ID": "t1"}))
    assert handle.runtime == "lowprio"
    async with asyncio.timeout(10):
        status = await runtime.wait(handle)
    assert status.exit_code == 0
    # The task itself reads its nice value (field 19 of /proc/self/stat).
    assert [line async for line in runtime.logs(handle)] == ["nice=19"]
    await runtime.remove(handle)
