"""Which layer may load which: checked on ``sys.modules`` of a fresh interpreter.

The agent runs on every node and must not carry the manager; the models are
imported by everything, the CLI first, and must not go looking for runtime
plugins (reading entry points scans every installed distribution).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(code: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("module", ["shoal.agent.agent", "shoal.agent.simfleet"])
def test_the_agent_does_not_load_the_manager(module: str) -> None:
    report = run(
        f"import json, sys, {module}\nprint(json.dumps({{'modules': sorted(sys.modules)}}))"
    )
    modules = report["modules"]
    assert isinstance(modules, list) and module in modules
    assert [m for m in modules if m == "shoal.manager" or m.startswith("shoal.manager.")] == []


def test_the_models_read_no_entry_points() -> None:
    # Every call to entry_points() is recorded, from before shoal is imported
    # (pydantic reads its own plugin group; that one is not ours to change).
    report = run(
        "import importlib.metadata as md, json\n"
        "calls = []\n"
        "real = md.entry_points\n"
        "md.entry_points = lambda *a, **k: calls.append(k) or real(*a, **k)\n"
        "from shoal.models import Service\n"
        "from shoal.manifest import load_text\n"
        "load_text('apiVersion: shoal/v1\\nkind: Service\\nmetadata: {name: web}\\n'\n"
        "          'spec: {template: {runtime: docker, image: busybox}}\\n', 'web.yaml')\n"
        "print(json.dumps({'calls': calls}))"
    )
    calls = report["calls"]
    assert isinstance(calls, list)
    assert [c for c in calls if c.get("group") != "pydantic"] == []
