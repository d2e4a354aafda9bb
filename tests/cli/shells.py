"""Driving shell completion the way a shell does, for the completion tests.

Each function sources the script ``shoal completion SHELL`` prints into a real
shell, sets what that shell sets on Tab (bash: ``COMP_WORDS``, ``COMP_CWORD``,
``COMP_LINE``, ``COMP_POINT``; zsh: ``words``, ``BUFFER``, ``CURSOR``; fish:
``complete -C``), calls the registered completion and returns what it offered.
The ``shoal`` run is the installed console script, found next to this
interpreter, as a user's shell finds it on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.engines import engines_required

SHOAL = Path(sys.executable).parent / "shoal"

BASH_DRIVER = r"""
source "$1"
COMP_LINE="$2"
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete shoal "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""

# zsh's completion system is not loaded (-f): _describe, which would show the
# candidates, prints them instead; compdef registers nothing.
ZSH_DRIVER = r"""
compdef() { :; }
source "$1"
_describe() { print -l -- ${(P)2}; }
BUFFER="$2"
CURSOR=${#BUFFER}
words=(${=BUFFER})
[[ "$BUFFER" == *" " ]] && words+=("")
_python_argcomplete
"""


def need(shell: str) -> str:
    """The shell's path; skips (fails in CI, SHOAL_REQUIRE_ENGINES) without it."""
    path = shutil.which(shell)
    if path is None:
        message = f"{shell} is not installed (apt-get install {shell})"
        if engines_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def script(shell: str, path: Path) -> Path:
    """Write ``shoal completion SHELL`` to ``path``, as the install docs say."""
    result = subprocess.run(
        [str(SHOAL), "completion", shell], capture_output=True, text=True, timeout=30, check=True
    )
    path.write_text(result.stdout)
    return path


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = {**os.environ, **(env or {})}
    merged["PATH"] = f"{SHOAL.parent}{os.pathsep}{merged.get('PATH', '')}"
    return merged


def _lines(args: list[str], env: Mapping[str, str] | None) -> list[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, env=_env(env))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line]


def bash_complete(scripts: Path, line: str, env: Mapping[str, str] | None = None) -> list[str]:
    """COMPREPLY after Tab at the end of ``line`` (words trimmed of the space bash adds)."""
    bash = need("bash")
    path = script("bash", scripts / "shoal.bash")
    found = _lines([bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", str(path), line], env)
    return [word.strip() for word in found]


def zsh_complete(scripts: Path, line: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The candidates zsh would show (``name`` of each ``name:description``)."""
    zsh = need("zsh")
    path = script("zsh", scripts / "_shoal")
    found = _lines([zsh, "-f", "-c", ZSH_DRIVER, "zsh", str(path), line], env)
    return [word.split(":", 1)[0].replace("\\", "") for word in found]


def fish_complete(scripts: Path, line: str, env: Mapping[str, str] | None = None) -> list[str]:
    fish = need("fish")
    path = script("fish", scripts / "shoal.fish")
    command = f"source {path}; complete -C {_fish_quote(line)}"
    found = _lines([fish, "--no-config", "-c", command], env)
    return [word.split("\t", 1)[0] for word in found]


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
