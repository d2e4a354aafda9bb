"""What a node advertises: ``--resource`` flags and NVIDIA GPU discovery from ``nvidia-smi -L``.

This machine has no GPU; discovery is tested on output in the form
``nvidia-smi -L`` prints (one ``GPU <index>: <name> (UUID: …)`` line per GPU,
MIG devices indented beneath their GPU), not on a fake binary.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from shoal.agent.agent import AgentSettings
from shoal.agent.resources import node_resources, nvidia_gpus, parse_resource, resource_flag
from shoal.agent.simfleet import fleet_settings
from shoal.errors import ShoalError

TWO_GPUS = """\
GPU 0: NVIDIA GeForce RTX 3090 (UUID: GPU-2f6c1d2e-8b1a-4e57-9c1d-6d0b5a7e1f01)
GPU 1: NVIDIA GeForce RTX 3090 (UUID: GPU-7a90c3b4-1e2d-4c68-b5a7-0e9f8d6c5b02)
"""
MIG = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5)
  MIG 3g.40gb     Device  0: (UUID: MIG-1a2b3c4d-5e6f-5a7b-8c9d-0e1f2a3b4c5d)
  MIG 3g.40gb     Device  1: (UUID: MIG-6e7f8a9b-0c1d-5e2f-3a4b-5c6d7e8f9a0b)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-f5e4d3c2-b1a0-9f8e-7d6c-5b4a3f2e1d0c)
"""


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        pytest.param(TWO_GPUS, ["0", "1"], id="two-gpus"),
        pytest.param(MIG, ["0", "1"], id="mig-devices-are-not-gpus"),
        pytest.param("", [], id="none"),
        pytest.param("No devices were found\n", [], id="no-devices-message"),
    ],
)
def test_nvidia_smi_listing(listing: str, expected: list[str]) -> None:
    assert nvidia_gpus(listing) == expected


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        pytest.param("gpu=2", ("gpu", ["0", "1"]), id="count"),
        pytest.param("gpu=GPU-8f3a,GPU-91c2", ("gpu", ["GPU-8f3a", "GPU-91c2"]), id="named"),
        pytest.param("fpga=x", ("fpga", ["x"]), id="one-named"),
        pytest.param("nvidia.com/gpu=1", ("nvidia.com/gpu", ["0"]), id="qualified-kind"),
    ],
)
def test_resource_flags(flag: str, expected: tuple[str, list[str]]) -> None:
    assert parse_resource(flag) == expected


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        pytest.param("gpu", "expected NAME=COUNT or NAME=UNIT", id="no-value"),
        pytest.param("gpu=", "expected NAME=COUNT or NAME=UNIT", id="empty-value"),
        pytest.param("gpu=0", "a count from 1 to 1024, got 0", id="zero"),
        pytest.param("gpu=a,a", "a unit is named twice", id="twice"),
        pytest.param("gpu=a,,b", "invalid resource unit ''", id="empty-unit"),
        pytest.param("my gpu=1", "invalid resource name 'my gpu'", id="bad-kind"),
    ],
)
def test_bad_resource_flags_say_why(flag: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        resource_flag(flag)


def test_flags_win_over_discovery_and_kinds_are_given_once() -> None:
    discovered = node_resources([], nvidia_smi=lambda: TWO_GPUS)
    assert discovered == {"gpu": ["0", "1"]}
    given = node_resources([("gpu", ["0"]), ("fpga", ["a"])], nvidia_smi=lambda: TWO_GPUS)
    assert given == {"gpu": ["0"], "fpga": ["a"]}
    assert node_resources([], nvidia_smi=lambda: None) == {}  # no nvidia-smi, or it failed
    assert node_resources([("gpu", ["0"])], discover=False) == {"gpu": ["0"]}
    with pytest.raises(ShoalError, match="--resource gpu is given twice"):
        node_resources([("gpu", ["0"]), ("gpu", ["1"])], discover=False)


def test_every_simulated_node_has_the_units_given(tmp_path: Path) -> None:
    base = AgentSettings(managers=["m:1"], token="t", state_dir=tmp_path, name="sim")
    base = dataclasses.replace(base, resources={"gpu": ["0", "1"]})
    nodes = fleet_settings(base, 3)
    assert [n.resources for n in nodes] == [{"gpu": ["0", "1"]}] * 3
