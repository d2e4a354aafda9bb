"""What generic resources this node has: ``--resource`` flags, else discovery.

``shoal agent --resource gpu=2`` advertises two units of ``gpu`` named ``0``
and ``1``; ``--resource gpu=GPU-8f3a,GPU-91c2`` names them. A kind not given
on the command line is discovered where shoal knows how: NVIDIA GPUs, when
``nvidia-smi`` is on the PATH, from ``nvidia-smi -L`` (one ``gpu`` unit per
``GPU <index>:`` line, named by the index, which is what
``CUDA_VISIBLE_DEVICES`` takes; MIG devices listed under a GPU are not
units of their own). A failing or missing ``nvidia-smi`` means no GPUs, with a
warning when it is there but fails. The manager's scheduler does the counting
(``shoal.reconciler.scheduler``); see ``shoal.models.resources`` for names.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable

import structlog

from shoal.errors import ShoalError
from shoal.models.resources import check_resource_kind, check_resource_unit

log = structlog.get_logger(__name__)

GPU_LINE = re.compile(r"^GPU (?P<index>\d+):")
# The most units one flag may count (``gpu=N``); a list of names has no limit but its length.
MAX_COUNT = 1024
NVIDIA_SMI_TIMEOUT = 10.0


def parse_resource(value: str) -> tuple[str, list[str]]:
    """``gpu=2`` → ``("gpu", ["0", "1"])``; ``gpu=a,b`` → ``("gpu", ["a", "b"])``.

    Raises ``ValueError`` saying what is wrong.
    """
    kind, sep, units = value.partition("=")
    if not sep or not kind or not units:
        raise ValueError(f"expected NAME=COUNT or NAME=UNIT[,UNIT…], got {value!r}")
    check_resource_kind(kind)
    if units.isdigit():
        count = int(units)
        if not 1 <= count <= MAX_COUNT:
            raise ValueError(f"{kind}: a count from 1 to {MAX_COUNT}, got {count}")
        return kind, [str(i) for i in range(count)]
    names = [u.strip() for u in units.split(",")]
    for name in names:
        check_resource_unit(name)
    if len(set(names)) != len(names):
        raise ValueError(f"{kind}: a unit is named twice in {units!r}")
    return kind, names


def resource_flag(value: str) -> tuple[str, list[str]]:
    """``parse_resource`` as an argparse type: a bad value is a usage error saying why."""
    try:
        return parse_resource(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def nvidia_gpus(listing: str) -> list[str]:
    """The GPU indexes in ``nvidia-smi -L`` output."""
    found = []
    for line in listing.splitlines():
        match = GPU_LINE.match(line)
        if match:
            found.append(match.group("index"))
    return found


def _run_nvidia_smi() -> str | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi failed; no GPUs advertised", error=str(exc))
        return None
    if done.returncode != 0:
        log.warning(
            "nvidia-smi failed; no GPUs advertised",
            exit_code=done.returncode,
            output=(done.stdout + done.stderr).strip()[:200],
        )
        return None
    return done.stdout


def node_resources(
    given: Iterable[tuple[str, list[str]]],
    discover: bool = True,
    nvidia_smi: Callable[[], str | None] = _run_nvidia_smi,
) -> dict[str, list[str]]:
    """The node's generic resources: ``given`` (parsed flags) over what is discovered.

    Raises ``ShoalError`` when a kind is given twice.
    """
    resources: dict[str, list[str]] = {}
    if discover:
        listing = nvidia_smi()
        gpus = nvidia_gpus(listing) if listing is not None else []
        if gpus:
            resources["gpu"] = gpus
    named: set[str] = set()
    for kind, units in given:
        if kind in named:
            raise ShoalError(f"--resource {kind} is given twice")
        named.add(kind)
        if kind in resources:
            log.info("--resource overrides discovery", kind=kind, discovered=resources[kind])
        resources[kind] = units
    return resources
