"""What ``deploy/`` ships, checked by the tools operators run on it.

``promtool`` (Debian's ``prometheus``) checks the scrape configuration and the
alerting rules and runs the rules' unit tests; ``systemd-analyze verify``
checks the units. Either tool missing skips, or fails under
``SHOAL_REQUIRE_ENGINES=1`` (CI installs both).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engines import missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, f"{name} is not installed")
    assert path is not None
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("check", "config", "prometheus.yml"), id="check-config"),
        pytest.param(("check", "rules", "rules/shoal.yml"), id="check-rules"),
        pytest.param(("test", "rules", "tests/shoal_test.yml"), id="test-rules"),
    ],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = run(tool("promtool"), *args, cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The rules' unit tests can fail: a rule that fires too early is caught."""
    promtool = tool("promtool")
    shutil.copytree(PROMETHEUS, tmp_path / "prometheus")
    rules = tmp_path / "prometheus" / "rules" / "shoal.yml"
    text = rules.read_text()
    below = text.index("alert: ShoalServiceBelowReplicas")
    rules.write_text(text[:below] + text[below:].replace("for: 5m", "for: 1m", 1))
    result = run(promtool, "test", "rules", "tests/shoal_test.yml", cwd=tmp_path / "prometheus")
    assert result.returncode != 0
    assert "ShoalServiceBelowReplicas" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_verify_cleanly(unit: Path, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # The units name /usr/local/bin/shoal (pipx's place, docs/install.md); verify
    # checks the binary exists, so it is pointed at the shoal of this checkout.
    shoal = str(Path(sys.executable).parent / "shoal")
    assert Path(shoal).exists(), f"no shoal command beside {sys.executable}"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/usr/local/bin/shoal", shoal))
    result = run(analyze, "verify", str(copy))
    # verify exits 0 on unknown keys and bad values: any word from it is a problem.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
