"""Which replica polls which practice when replicas share the fleet (`pmsctl operator --share`).

Pure functions, no I/O. A practiceId falls in one of `BUCKETS` buckets (a stable hash), and each
bucket belongs to the member with the highest rendezvous weight for it (highest random weight
hashing over the member names). So:

- every practice has exactly one owner among the members, whatever order they are listed in;
- when a member joins, only the buckets it now wins move, all of them to it (about 1/N of the
  practices for N members after the join); when one leaves, only its buckets move;
- the claims a replica holds in the database are per bucket, not per practice: their number is
  bounded by `BUCKETS` across the whole fleet, however many practices there are, which keeps
  PostgreSQL's lock table small (`reconciler.stores.claims`).

`BUCKETS` is part of the protocol between replicas: replicas of one fleet must agree on it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

#: Buckets the practiceIds are spread over. Enough that N members get even shares (the share of
#: one member varies by about sqrt(BUCKETS * p * (1 - p)) buckets), few enough that a replica's
#: claims stay a small part of PostgreSQL's lock table.
BUCKETS = 1024


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def bucket(practice_id: str) -> int:
    """The bucket (0..BUCKETS-1) `practice_id` falls in."""
    return _hash64(practice_id) % BUCKETS


def weight(bucket_no: int, member: str) -> int:
    """The rendezvous weight of `member` for `bucket_no`: the highest weight owns the bucket."""
    return _hash64(f"{bucket_no}\0{member}")


def bucket_owner(bucket_no: int, members: Iterable[str]) -> str | None:
    """The member owning `bucket_no` (None when there are no members). Ties (never seen with
    64-bit weights) go to the greater name, so every replica picks the same one."""
    return max(members, key=lambda m: (weight(bucket_no, m), m), default=None)


def owner(practice_id: str, members: Iterable[str]) -> str | None:
    """The member that polls `practice_id` (None when there are no members)."""
    return bucket_owner(bucket(practice_id), members)


@functools.lru_cache(maxsize=16)
def _assignment(members: frozenset[str]) -> dict[str, frozenset[int]]:
    owned: dict[str, set[int]] = {m: set() for m in members}
    for b in range(BUCKETS):
        won = bucket_owner(b, members)
        if won is not None:
            owned[won].add(b)
    return {m: frozenset(bs) for m, bs in owned.items()}


def buckets_of(member: str, members: Iterable[str]) -> frozenset[int]:
    """The buckets `member` owns among `members` (empty when it is not one of them)."""
    return _assignment(frozenset(members)).get(member, frozenset())
