"""Shell completion without a cluster: the scripts, verbs, options and choices.

Completion of names from a live cluster is in ``tests/e2e/test_cli_completion.py``;
here no manager runs, and completing a name must offer nothing and say nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.shells import SHOAL, bash_complete, fish_complete, need, script, zsh_complete


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str]:
    """No cluster to find: an empty state dir, a config file that does not exist."""
    return {
        "SHOAL_STATE_DIR": str(tmp_path / "state"),
        "SHOAL_CONFIG": str(tmp_path / "config.yaml"),
        "SHOAL_SERVER": "",
    }


@pytest.mark.parametrize(
    ("shell", "check"),
    [
        pytest.param("bash", ["-n"], id="bash"),
        pytest.param("zsh", ["-n"], id="zsh"),
        pytest.param("fish", ["--no-execute"], id="fish"),
    ],
)
def test_completion_scripts_are_valid_shell(tmp_path: Path, shell: str, check: list[str]) -> None:
    path = script(shell, tmp_path / f"shoal.{shell}")
    assert "shoal" in path.read_text()
    result = subprocess.run(
        [need(shell), *check, str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    result = subprocess.run(
        [str(SHOAL), "completion", "tcsh"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "invalid choice: 'tcsh'" in result.stderr


def test_bash_completes_verbs_resources_options_and_choices(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    assert bash_complete(tmp_path, "shoal ro", offline) == ["rollout"]
    assert set(bash_complete(tmp_path, "shoal get ", offline)) == {
        "services",
        "service",
        "svc",
        "tasks",
        "task",
        "nodes",
        "node",
        "syncs",
        "sync",
    }
    assert bash_complete(tmp_path, "shoal get svc -o ", offline) == [
        "table",
        "wide",
        "yaml",
        "json",
    ]
    assert set(bash_complete(tmp_path, "shoal logs --f", offline)) == {"--follow"}
    assert bash_complete(tmp_path, "shoal completion ", offline) == ["bash", "zsh", "fish"]
    assert bash_complete(tmp_path, "shoal delete ", offline) == ["service", "services", "svc"]


def test_zsh_and_fish_complete_the_same_words(tmp_path: Path, offline: dict[str, str]) -> None:
    assert zsh_complete(tmp_path, "shoal rollout ", offline) == bash_complete(
        tmp_path, "shoal rollout ", offline
    )
    assert "undo" in zsh_complete(tmp_path, "shoal rollout ", offline)
    assert sorted(fish_complete(tmp_path, "shoal completion ", offline)) == ["bash", "fish", "zsh"]


def test_names_with_no_cluster_complete_nothing_and_print_nothing(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    assert bash_complete(tmp_path, "shoal get services ", offline) == []
    assert bash_complete(tmp_path, "shoal logs ", offline) == []
    # What the shell would otherwise hide (the scripts send stderr to /dev/null):
    # shoal itself, asked the way the scripts ask, answers nothing and says nothing.
    answer = tmp_path / "answer"
    line = "shoal get services "
    result = subprocess.run(
        [str(SHOAL)],
        env={
            **os.environ,
            **offline,
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_SHELL": "bash",
            "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),  # instead of file descriptor 8
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert answer.read_text() == ""
    assert result.returncode == 0
    assert result.stdout == result.stderr == ""


def test_contexts_complete_from_the_config_file(tmp_path: Path, offline: dict[str, str]) -> None:
    Path(offline["SHOAL_CONFIG"]).write_text(
        "current: prod\ncontexts:\n"
        + "".join(
            f"- name: {name}\n  servers: ['127.0.0.1:1']\n  ca: x\n  cert: x\n  key: x\n"
            for name in ("prod", "staging")
        )
    )
    assert bash_complete(tmp_path, "shoal get services --context ", offline) == [
        "prod",
        "staging",
    ]
