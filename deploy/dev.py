#!/usr/bin/env python3
"""The README's two commands, from a fresh clone with only Python 3.11+.

    python3 deploy/dev.py up      set up .venv, start a one-node cluster running examples/hello.yaml
    python3 deploy/dev.py test    set up .venv with dev tools; run ruff, mypy and every test

Both create ``.venv`` in the repository (once) and install shoal into it in
editable mode, so the ``shoal`` command is ``.venv/bin/shoal``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"


def run(*args: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=check).returncode


def setup(extras: str = "") -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"shoal needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".{extras}" if extras else "."
    run(
        BIN / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-e",
        target,
    )


def up() -> int:
    setup()
    state = ROOT / ".shoal"
    env = {**os.environ, "SHOAL_STATE_DIR": str(state)}
    server = subprocess.Popen(
        [BIN / "shoal", "up", "--state-dir", state, "--metrics-listen", "127.0.0.1:7421"], env=env
    )
    shoal = [str(BIN / "shoal")]
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*shoal, "version"], env=env, capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                print("shoal up did not start; see the messages above", file=sys.stderr)
                return 1
            time.sleep(0.3)
        for args in (
            ["apply", "-f", "examples/hello.yaml"],
            ["rollout", "status", "hello"],
            ["get", "services"],
            ["get", "tasks"],
        ):
            subprocess.run([*shoal, *args], cwd=ROOT, env=env, check=True)
        print(
            "\nshoal is running 'hello' (3 processes); metrics on http://127.0.0.1:7421/metrics."
            "\nIn another terminal: export SHOAL_STATE_DIR=.shoal; .venv/bin/shoal get tasks"
            "\nFollowing its logs; press Ctrl-C to delete the service and stop.\n",
            flush=True,
        )
        subprocess.run([*shoal, "logs", "hello", "-f", "--tail", "5"], env=env)
    except KeyboardInterrupt:
        pass
    finally:
        subprocess.run([*shoal, "delete", "service", "hello", "--ignore-not-found"], env=env)
        server.terminate()
        server.wait(30)
    return 0


def test() -> int:
    setup("[dev]")
    run(BIN / "ruff", "check", "shoal", "tests", "bench", "deploy")
    run(BIN / "ruff", "format", "--check", "shoal", "tests", "bench", "deploy")
    run(BIN / "mypy")
    return run(BIN / "pytest", "-q", *sys.argv[2:], check=False)


def main() -> int:
    commands = {"up": up, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[sys.argv[1]]()
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
