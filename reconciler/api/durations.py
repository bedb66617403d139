"""Go-style durations (`15s`, `1m30s`, `1.5h`, `250ms`): the one parser for the resource.

Kubernetes and the schema's `x-duration` bounds follow Go's `time.ParseDuration`, whose arithmetic
is integer nanoseconds with fractions truncated; `duration_ns()` reproduces it exactly, so a bound
check never disagrees with the API server by a rounding error. `parse_duration()` gives seconds
for timers. Both accept what the schema's duration pattern accepts (units h, m, s, ms; no sign)
and raise ValueError for anything else.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal

_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:h|ms|m|s))+")
_PART = re.compile(r"([0-9]+)(?:\.([0-9]+))?(h|ms|m|s)")
_UNIT_NS = {"h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000}


@functools.lru_cache(maxsize=4096)
def duration_ns(text: str) -> int:
    """Exact nanoseconds of a duration (Go's arithmetic); ValueError if malformed."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration like 15s, 1m or 1m30s")
    total = 0
    for whole, frac, unit in _PART.findall(text):
        scale = _UNIT_NS[unit]
        total += int(whole) * scale
        if frac:
            total += int(Decimal(int(frac)) * scale / (10 ** len(frac)))
    return total


def parse_duration(text: str) -> float:
    """Seconds of a duration (`15s` -> 15.0, `1m30s` -> 90.0); ValueError if malformed."""
    return duration_ns(text) / 1e9
