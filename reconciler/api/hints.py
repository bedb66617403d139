"""The fix a message suggests: pure functions from what was written to what was meant.

`reconciler.api.validate` builds its messages from these; each takes plain values (the wrong
word, the allowed words, the source text of a scalar) and returns text or None, so a table test
holds every suggestion. Nothing here reads files or the schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Key names that hold credentials: a message never shows their values.
CREDENTIAL_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[-_]?key|customer[-_]?key|developer[-_]?key|credential|bearer|authorization|^auth$)",
    re.IGNORECASE,
)

#: The words YAML 1.1 (pyyaml, and the Kubernetes YAML reader) turns into booleans unquoted.
BOOLEAN_WORDS = {
    "true": True,
    "yes": True,
    "y": True,
    "on": True,
    "false": False,
    "no": False,
    "n": False,
    "off": False,
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions counted as one edit."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option nearest to `word` by edit distance (case ignored), if it is near enough to be
    a typo: at most a third of the word's length, at least 2 edits allowed. Ties go to the
    earlier option."""
    best: tuple[int, str] | None = None
    folded = word.casefold()
    for option in options:
        distance = edit_distance(folded, option.casefold())
        if best is None or distance < best[0]:
            best = (distance, option)
    if best is None or best[1] == word:
        return None
    return best[1] if best[0] <= max(2, len(word) // 3) else None


def leading_zeros_lost(source: str, value: object) -> bool:
    """True when an unquoted number's source text had leading zeros its value dropped."""
    digits = source.lstrip("+-")
    return (
        len(digits) > 1
        and digits.startswith("0")
        and digits[1:2].isdigit()
        and str(value) != source
    )


def quoted(key: str, source: str) -> str:
    """`key: "source"`, the way to write a scalar so that YAML keeps it a string (`key: "..."`
    for a credential-looking key: its value is never shown)."""
    if CREDENTIAL_KEY.search(key):
        return f'{key}: "..."'
    escaped = source.replace("\\", "\\\\").replace('"', '\\"')
    return f'{key}: "{escaped}"'


_DURATION_UNITS = {
    "ms": "ms",
    "msec": "ms",
    "msecs": "ms",
    "millisecond": "ms",
    "milliseconds": "ms",
    "s": "s",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "m": "m",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "h": "h",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
}
_DURATION_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*,?")


def duration(text: str) -> str | None:
    """The Go duration a person meant (`30 sec` -> `30s`, `1 Minute 30 Seconds` -> `1m30s`,
    `30S` -> `30s`), or None when the text is not numbers with unit words."""
    parts = []
    end = 0
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_UNITS.get(match.group(2).lower())
        if match.start() != end or unit is None:
            return None
        parts.append(match.group(1) + unit)
        end = match.end()
    return "".join(parts) if parts and end == len(text) and "".join(parts) != text else None


_DNS_INVALID = re.compile(r"[^a-z0-9.-]+")


def dns_name(text: str) -> str | None:
    """A lowercase RFC 1123 subdomain close to `text` (`Acme_Dental` -> `acme-dental`), or None
    when nothing usable is left."""
    name = _DNS_INVALID.sub("-", text.lower())
    name = re.sub(r"-{2,}", "-", name)
    name = ".".join(part.strip("-") for part in name.split(".") if part.strip("-"))
    return name[:253] or None


_KEY_WITHOUT_SPACE = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][A-Za-z0-9_.-]*):([^\s/:].*)$")


def missing_space_after_colon(line: str) -> tuple[str, str] | None:
    """(key, value) when `line` is `key:value` with no space after the colon (YAML then reads
    the whole line as one string); None for `https://...`-like values and for anything else.
    The value of a credential-looking key comes back as `...`."""
    match = _KEY_WITHOUT_SPACE.match(line.rstrip())
    if not match:
        return None
    key = match.group(1)
    return key, "..." if CREDENTIAL_KEY.search(key) else match.group(2)
