"""The local adapter's errors.

Exception
├── UpError                 `pmsctl up` cannot start (bad flags, unreadable credentials); exit 2
└── engine.SecretNotFoundError
    └── CredentialsNotFound no credentials for a practice's Secret name (reported in status)
"""

from __future__ import annotations

from reconciler.engine.engine import SecretNotFoundError


class UpError(Exception):
    """A problem `pmsctl up` cannot start with (bad flags, unreadable credentials file); exit 2."""


class CredentialsNotFound(SecretNotFoundError):
    """No credentials for a practice's Secret name in the credentials file or environment."""
