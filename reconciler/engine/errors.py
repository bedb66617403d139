"""The engine's own errors (a PMS error is a `pms_drivers.errors.PmsError`, never wrapped).

EngineError            base
└── SecretNotFoundError  the practice's credentials Secret is missing or unreadable: fix the Secret
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's own errors (PMS errors are `pms_drivers.errors.PmsError`)."""


class SecretNotFoundError(EngineError):
    """The practice's credentials Secret does not exist (or cannot be read)."""
