"""Generic resources: Swarm's named, countable resources (GPUs, licences, FPGAs …).

A node advertises each kind as a list of *units* (``shoal agent --resource
gpu=2`` gives the units ``0`` and ``1``; ``--resource gpu=GPU-a1,GPU-b2``
names them), a service reserves a number of units per kind
(``resources.reservations.generic: {gpu: 1}``), and the scheduler gives each
task specific units of its node, which the task is told in its environment:
``SHOAL_RESOURCE_GPU=1`` (several: ``0,1``). Kinds are matched exactly (case
included); the variable's name is the kind upper-cased, with every character
other than a letter or digit turned into ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

from pydantic import AfterValidator

RESOURCE_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,62}$")
RESOURCE_UNIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
ENV_PREFIX: Final = "SHOAL_RESOURCE_"


def check_resource_kind(kind: str) -> str:
    if not RESOURCE_KIND.match(kind):
        raise ValueError(
            f"invalid resource name {kind!r}: a letter, then letters, digits, '_', '.', '/' or '-' "
            "(at most 63 characters)"
        )
    return kind


def check_resource_unit(unit: str) -> str:
    if not RESOURCE_UNIT.match(unit):
        raise ValueError(
            f"invalid resource unit {unit!r}: letters, digits, '_', '.', ':', '/' or '-', "
            "starting with a letter or digit"
        )
    return unit


ResourceKind = Annotated[str, AfterValidator(check_resource_kind)]
ResourceUnit = Annotated[str, AfterValidator(check_resource_unit)]


def resource_env_name(kind: str) -> str:
    """``gpu`` → ``SHOAL_RESOURCE_GPU``; ``nvidia.com/gpu`` → ``SHOAL_RESOURCE_NVIDIA_COM_GPU``."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", kind.upper())


def resource_env(assigned: Mapping[str, list[str]]) -> dict[str, str]:
    """The environment that tells a task which units it got: ``{SHOAL_RESOURCE_GPU: "0,1"}``."""
    return {resource_env_name(kind): ",".join(units) for kind, units in sorted(assigned.items())}


def check_distinct_env_names(kinds: Mapping[str, object]) -> None:
    """Two kinds that would tell the task through the same variable (``gpu``, ``GPU``)."""
    seen: dict[str, str] = {}
    for kind in kinds:
        name = resource_env_name(kind)
        if name in seen:
            raise ValueError(
                f"resources {seen[name]!r} and {kind!r} would both be told as {name}: rename one"
            )
        seen[name] = kind
