"""A longer fuzzing run of the gRPC surface and the spec loader (not timed: counted).

Starts a real manager (memory store, real gRPC with mutual TLS) and sends every
Control and Dispatcher method ``--examples`` hypothesis-generated requests (JSON
objects made of the fields shoal reads, arbitrary bytes, non-objects), then runs
the spec loader on as many generated YAML texts. Prints, per method, the inputs
tried and the status codes they got; a failure is an ``UNKNOWN`` or ``INTERNAL``
answer, or a spec refused without ``FILE:LINE``. Exit code 1 if there is any.

    .venv/bin/python bench/fuzz_api.py --examples 2000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from shoal.api.transport import CONTROL_SERVICE, DISPATCHER_SERVICE  # noqa: E402
from shoal.errors import SpecError  # noqa: E402
from shoal.manifest import load_text  # noqa: E402
from tests.fuzzing import (  # noqa: E402
    CONTROL_METHODS,
    DISPATCHER_METHODS,
    RAW,
    call_raw,
    secure_channel,
    serve_manager,
    spec_texts,
)

METHODS = [
    *[(CONTROL_SERVICE, m, False, stream) for m, stream in CONTROL_METHODS],
    *[(DISPATCHER_SERVICE, m, True, stream) for m, stream in DISPATCHER_METHODS],
]
NEVER = {"UNKNOWN", "INTERNAL"}


def fuzz_method(
    channel: Any, path: str, stream: bool, examples: int, seed_value: int
) -> tuple[collections.Counter[str], list[str]]:
    codes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []

    @seed(seed_value)
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(RAW)
    def run(body: bytes) -> None:
        code = call_raw(channel, path, body, stream=stream)
        codes[code] += 1
        if code in NEVER:
            failures.append(f"{path}: {code} for {body[:80]!r}")

    run()
    return codes, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="per method (default 2000)")
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    failures: list[str] = []
    total = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, serve_manager(Path(tmp)) as served:
        for service, method, as_node, stream in METHODS:
            channel = secure_channel(served.address, served.node if as_node else served.admin)
            codes, failed = fuzz_method(
                channel, f"/{service}/{method}", stream, args.examples, args.seed
            )
            failures += failed
            channel.close()
            total += sum(codes.values())
            print(f"{method:18} {sum(codes.values()):6} inputs  {dict(sorted(codes.items()))}")
    specs = collections.Counter[str]()

    @seed(args.seed)
    @settings(max_examples=args.examples * 2, deadline=None, database=None)
    @given(spec_texts)
    def spec(text: str) -> None:
        try:
            load_text(text, "fuzz.yaml")
            specs["loaded"] += 1
        except SpecError as exc:
            specs["refused with file:line"] += 1
            if not all(p.startswith("fuzz.yaml:") for p in exc.problems):
                failures.append(f"spec refused without file:line: {exc.problems}")
        except Exception as exc:  # the property: nothing else escapes
            failures.append(f"spec loader raised {exc!r} for {text[:80]!r}")

    spec()
    print(f"{'spec loader':18} {sum(specs.values()):6} inputs  {dict(specs)}")
    elapsed = time.monotonic() - started
    print(
        f"total: {total + sum(specs.values())} inputs in {elapsed:.0f} s, failures: {len(failures)}"
    )
    for failure in failures[:20]:
        print("  " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
