"""docs/compose.md shows the key table shoal decides with (``shoal.compose.keys``), row by row."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.compose.keys import KEYS, Verdict
from shoal.compose.loader import load_stack

DOC = Path(__file__).parents[2] / "docs" / "compose.md"
EXAMPLE = Path(__file__).parents[2] / "examples" / "compose" / "compose.yaml"


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[]", "[]")


@pytest.mark.parametrize(
    ("path", "verdict"), [pytest.param(p, v, id=_dotted(p)) for p, v in KEYS.items()]
)
def test_every_key_has_its_row(path: tuple[str, ...], verdict: Verdict) -> None:
    row = f"| `{_dotted(path)}` | {verdict.kind} | {verdict.reason} |"
    assert row in DOC.read_text()


def test_the_example_converts_without_problems() -> None:
    stack = load_stack([EXAMPLE], "demo", {})
    assert sorted(s.name for s in stack.services) == ["demo-api", "demo-cache", "demo-report"]


def test_the_cli_labels_as_the_converter_does() -> None:
    from shoal.cli import stack
    from shoal.compose import convert

    assert stack.STACK_LABEL == convert.STACK_LABEL
