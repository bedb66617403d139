"""Errors of the writeback path, split by what the caller does next.

    WritebackError            base
    ├── WritebackConfigError  fix the configuration: no token, an unreadable token file
    └── StoreError            the queue file cannot be opened or used (path, permissions, schema)

Request problems are not exceptions that leave this package: the API answers them as 4xx JSON
(`reconciler.writeback.model.RequestError` carries the field and the status). Delivery problems
are `pms_drivers.errors` and end up in the record (`failed` with its reason).
"""

from __future__ import annotations


class WritebackError(Exception):
    """Base of the writeback path's errors."""


class WritebackConfigError(WritebackError):
    """The writeback service is configured wrongly; the message names the setting and the fix."""


class StoreError(WritebackError):
    """The queue file cannot be opened or used; the message names the file."""
