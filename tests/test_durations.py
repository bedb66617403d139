"""`reconciler.api.durations`: the one Go-duration parser, used by the spec model and the schema
bounds, as a table. Pure functions; nothing to fake."""

from __future__ import annotations

import pytest

from reconciler.api import durations, spec, validate


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("15s", 15_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("250ms", 250_000_000),
        ("1h1m1s1ms", 3_661_001_000_000),
        # Go truncates below a nanosecond instead of rounding.
        ("1.0000000019s", 1_000_000_001),
        ("0.3333333333333m", 19_999_999_999),
    ],
)
def test_durations_are_exact_nanoseconds_as_go_computes_them(text: str, ns: int) -> None:
    assert durations.duration_ns(text) == ns
    assert durations.parse_duration(text) == pytest.approx(ns / 1e9)


@pytest.mark.parametrize(
    "text", ["", "15", "s", "-1s", "1d", "1.s", ".5s", "15s\n", "\u0661\u0665s", " 15s"]
)
def test_what_the_schema_pattern_rejects_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        durations.duration_ns(text)
    with pytest.raises(ValueError, match="is not a duration"):
        spec.parse_duration(text)


def test_the_spec_model_and_the_validator_use_the_one_parser() -> None:
    assert spec.parse_duration is durations.parse_duration
    assert validate.duration_ns is durations.duration_ns
