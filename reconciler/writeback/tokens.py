"""The writeback API's bearer tokens: checked, compared in constant time, rotated without a restart.

`BearerTokens` holds the current token and, for `grace` seconds after it changed, the previous
one. When the token came from a file (a Kubernetes Secret key mounted as a file, which the
kubelet updates in place), the file is looked at again at most every `recheck` seconds; a new
valid token there becomes current, and the old one keeps working for `grace` seconds, so
clients can switch over while the service runs. Nothing here logs, raises or returns a token.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
MIN_TOKEN_CHARS = 16
#: The variable naming the token file (read by `service.load_token`, watched here).
TOKEN_FILE_ENV = "PMSCTL_WRITEBACK_TOKEN_FILE"


def token_problem(token: str) -> str | None:
    """None for a usable bearer token, else what is wrong with it, never quoting it: one line of
    visible ASCII (what an HTTP header can carry and every client sends unchanged)."""
    lines = token.splitlines()
    if len(lines) > 1:
        return f"holds {len(lines)} lines; a token is one line (put only the token in the file)"
    for n, char in enumerate(token, 1):
        if not "!" <= char <= "~":
            return (
                f"has a character that cannot go in an HTTP header at position {n}; a token is "
                "visible ASCII (letters, digits, punctuation) without spaces"
            )
    return None


@dataclass
class BearerTokens:
    """The tokens `Authorization: Bearer ...` is checked against (safe from any thread)."""

    current: str
    #: The file the token was read from, watched for a new one; None: it never changes.
    path: str | None = None
    grace: float = 600.0
    recheck: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _previous: bytes | None = field(default=None, init=False, repr=False)
    _previous_until: float = field(default=0.0, init=False, repr=False)
    _next_check: float = field(default=0.0, init=False, repr=False)
    _stamp: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._expected = self._header(self.current)
        self._stamp = self._file_stamp()  # the first accepts() looks at it again (cheap)

    @staticmethod
    def _header(token: str) -> bytes:
        return f"Bearer {token}".encode()

    def accepts(self, authorization: bytes) -> bool:
        """Whether an Authorization header value (as bytes) carries an accepted token."""
        self._maybe_reload()
        ok = hmac.compare_digest(authorization, self._expected)
        previous = self._previous
        if previous is not None:
            # Both compared every time, so the answer's timing does not tell which one matched.
            old_ok = hmac.compare_digest(authorization, previous)
            ok = ok or (old_ok and self.clock() < self._previous_until)
        return ok

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _maybe_reload(self) -> None:
        if self.path is None or self.clock() < self._next_check:
            return
        with self._lock:
            now = self.clock()
            if now < self._next_check:
                return
            self._next_check = now + self.recheck
            stamp = self._file_stamp()
            if stamp is None or stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                with open(self.path, encoding="utf-8") as f:
                    token = f.read().strip()
            except (OSError, UnicodeDecodeError):
                log.warning("writeback token file %s changed but cannot be read; the current "
                            "token stays", self.path)  # fmt: skip
                return
            if token == self.current:
                return
            problem = token_problem(token)
            if problem is None and len(token) < MIN_TOKEN_CHARS:
                problem = f"is {len(token)} characters; use at least {MIN_TOKEN_CHARS}"
            if problem is not None:
                log.warning("writeback token file %s changed, but the new token %s; the current "
                            "token stays", self.path, problem)  # fmt: skip
                return
            self._previous, self._previous_until = self._expected, now + self.grace
            self.current, self._expected = token, self._header(token)
            log.info("writeback token file %s: a new token is in use; the previous one is "
                     "accepted for %g s more", self.path, self.grace)  # fmt: skip
