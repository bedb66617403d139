"""`--selector` parsing into Kopf label filters (pure; Kopf's markers are the real objects)."""

from __future__ import annotations

import kopf
import pytest

from reconciler.kube.handlers import parse_selector


def test_selector_terms_become_kopf_label_filters() -> None:
    f = parse_selector("shard=a, tier==gold,managed,!legacy,region!=eu")
    assert f["shard"] == "a" and f["tier"] == "gold"
    assert f["managed"] is kopf.PRESENT and f["legacy"] is kopf.ABSENT
    assert f["region"]("us") is True and f["region"]("eu") is False
    assert parse_selector("") == {} and parse_selector(None) == {}


@pytest.mark.parametrize("bad", ["tier in (a,b)", "=x", "a b"])
def test_unsupported_selector_terms_are_rejected_with_the_term_named(bad: str) -> None:
    with pytest.raises(ValueError, match="--selector: "):
        parse_selector(bad)
