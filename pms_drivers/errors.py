"""Errors raised by PMS drivers, split by what the caller does next.

    PmsError                      base: carries pms, operation, HTTP status and URL (never a secret)
    ├── TemporaryPmsError         retry later: timeouts, connection errors, 5xx
    │   └── RateLimitedError      429 (or 503 with Retry-After): wait `retry_after` seconds
    ├── PermanentPmsError         retrying will not help: fix the spec or the request (400)
    │   └── PmsNotFoundError      404: the id or path does not exist in this PMS
    └── PmsAuthError              401/403: fix the credentials in the practice's Secret

The engine translates these into conditions; the operator module alone translates them into
`kopf.TemporaryError`/`kopf.PermanentError`.
"""

from __future__ import annotations


class PmsError(Exception):
    """A PMS call failed; the message names the PMS, the operation, the status and the URL."""

    def __init__(
        self,
        message: str,
        *,
        pms: str,
        operation: str,
        status: int | None = None,
        url: str | None = None,
    ) -> None:
        self.pms = pms
        self.operation = operation
        self.status = status
        self.url = url
        self.reason = message
        where = f" ({url})" if url else ""
        code = f" HTTP {status}" if status is not None else ""
        super().__init__(f"{pms} {operation}:{code} {message}{where}".replace(":  ", ": "))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class TemporaryPmsError(PmsError):
    """Retry later: the PMS or the network is having a bad moment."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RateLimitedError(TemporaryPmsError):
    """The PMS throttled us (429, or 503 with Retry-After); wait `retry_after` seconds."""


class PermanentPmsError(PmsError):
    """The PMS rejected the request; retrying the same request will not help."""


class PmsNotFoundError(PermanentPmsError):
    """The PMS has no such resource (404)."""


class PmsAuthError(PmsError):
    """The PMS refused the credentials (401/403): fix the practice's Secret."""
