"""Errors of the PMS simulator.

    SimulatorError              base
    ├── UnknownPracticeError    a practice id that was never added (admin/test API)
    ├── DriftError              a drift operation named a note type, category or provider that is not there
    └── ApiError                a request the simulated PMS rejects; carries the HTTP status, a
                                machine code (bridge) and the plain reason (Open Dental)

`ApiError` never leaves the HTTP layer: `opendental.py` renders it as text/plain and `bridge.py`
as the JSON error envelope.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of the simulator's errors."""


class UnknownPracticeError(SimulatorError, LookupError):
    """The practice id was never added to this simulator."""


class DriftError(SimulatorError, LookupError):
    """A drift operation named something the practice does not have."""


class ApiError(SimulatorError):
    """The simulated PMS answers this request with `status`; `code` is the bridge error code."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str = "invalid_request",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after
