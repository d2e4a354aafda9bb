#!/usr/bin/env python3
"""The README's two commands, from a fresh clone with only Python 3.11+.

    python3 deploy/dev.py up      set up .venv, start a one-node cluster running examples/hello.yaml
    python3 deploy/dev.py test    set up .venv with dev tools; ruff, mypy, the docs site, every test
    python3 deploy/dev.py docs    serve the documentation site at http://127.0.0.1:8000

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
    state.mkdir(exist_ok=True)
    env = {**os.environ, "SHOAL_STATE_DIR": str(state)}
    shoal = [str(BIN / "shoal")]
    log_path = state / "shoal.log"
    with log_path.open("ab") as log:
        # Its own session: Ctrl-C here must not stop the cluster before the clean-up below.
        server = subprocess.Popen(
            [*shoal, "up", "--state-dir", state, "--metrics-listen", "127.0.0.1:7421"],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*shoal, "get", "nodes"], env=env, capture_output=True).returncode:
            if server.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                print(f"shoal up did not start; its log is {log_path}", file=sys.stderr)
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
            f"""
shoal is running the service 'hello' (3 processes) on a one-node cluster.
  manager log:  {log_path}
  metrics:      http://127.0.0.1:7421/metrics
  try, in another terminal:  export SHOAL_STATE_DIR={state}
                             .venv/bin/shoal get tasks; .venv/bin/shoal scale hello=5
Following the service's logs; press Ctrl-C to delete it and stop the cluster.
""",
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


# MkDocs' own notice about its next major version is not ours to print on every build.
DOCS_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def test() -> int:
    setup("[dev,docs]")
    run(BIN / "ruff", "check", "shoal", "tests", "bench", "deploy", "docs")
    run(BIN / "ruff", "format", "--check", "shoal", "tests", "bench", "deploy", "docs")
    run(BIN / "mypy")
    # The site in strict mode: a broken link or anchor fails the run.
    print("+ mkdocs build --strict", flush=True)
    subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "--site-dir", str(ROOT / "site")],
        cwd=ROOT,
        env=DOCS_ENV,
        check=True,
    )
    return run(BIN / "pytest", "-q", *sys.argv[2:], check=False)


def docs() -> int:
    setup("[docs]")
    return subprocess.run([str(BIN / "mkdocs"), "serve"], cwd=ROOT, env=DOCS_ENV).returncode


def main() -> int:
    commands = {"up": up, "test": test, "docs": docs}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return commands[sys.argv[1]]()
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
