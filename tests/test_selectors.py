"""Label selectors (``shoal.selectors``): what each form matches, and what is refused."""

from __future__ import annotations

import pytest

from shoal.selectors import parse_selector

LABELS = {"app": "web", "tier": "front", "team": ""}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        pytest.param("", True, id="empty-matches-all"),
        pytest.param("app=web", True, id="equals"),
        pytest.param("app==web", True, id="double-equals"),
        pytest.param("app=db", False, id="equals-other-value"),
        pytest.param("app!=db", True, id="not-equals"),
        pytest.param("app!=web", False, id="not-equals-same-value"),
        pytest.param("zone!=a", True, id="not-equals-absent-label"),
        pytest.param("tier", True, id="exists"),
        pytest.param("zone", False, id="exists-absent"),
        pytest.param("!zone", True, id="not-exists"),
        pytest.param("!app", False, id="not-exists-present"),
        pytest.param("team=", True, id="empty-value"),
        pytest.param("app=web,tier=front", True, id="comma-is-and"),
        pytest.param("app=web,tier=back", False, id="comma-is-and-one-fails"),
        pytest.param(" app = web , tier ", True, id="spaces-around"),
    ],
)
def test_selector_matches(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


def test_canonical_text_parses_to_the_same_selector() -> None:
    selector = parse_selector(" app == web, !zone ,tier!=db,canary")
    assert str(selector) == "app=web,!zone,tier!=db,canary"
    assert str(parse_selector(str(selector))) == str(selector)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("app=web,", "an empty requirement", id="trailing-comma"),
        pytest.param("app in (a,b)", "set-based", id="set-based"),
        pytest.param("=web", "'' is not a label key", id="no-key"),
        pytest.param("app=we b", "'we b' is not a label value", id="space-in-value"),
        pytest.param("a=b=c", "'b=c' is not a label value", id="two-equals"),
        pytest.param("-app", "'-app' is not a label key", id="bad-key"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="invalid selector") as caught:
        parse_selector(text)
    assert says in str(caught.value)
