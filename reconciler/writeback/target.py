"""The contract between the engine and the writeback path.

The engine (operator or `pmsctl up`) knows each practice's current spec, what it resolved in the
PMS, and holds the practice's driver (whose HTTP client carries the practice's rate budget). The
writeback path asks it for a `WritebackTarget` by practice id each time it decides or delivers, so
a setting changed in the spec takes effect for the next request.

Whether the practice's provider and names are usable is a tri-state, read from `provider_id`
(and the id maps) together with `checked`:

    verified      provider_id set                    write
    not verified  provider_id None, checked          the PMS said no: skip (ProviderNotVerified)
    unknown       provider_id None, not checked      the PMS has not answered since start (down,
                                                     credentials refused): wait, decide later

"Not verified yet" is not "not allowed": a request the PMS has not been asked about yet stays
pending and is decided when the practice is checked.

A directory may also be still loading (`LoadingDirectory`): at start-up the process serves the
API before it has read every practice (the folder's first sync, Kopf's first reconcile of the
practices it found). While it loads, a practice it does not hold yet may be one it is about to
load, so the API answers 503 + Retry-After ("try again"), not 404 ("no such practice").
`StartupGate` is that state, flipped by the runtime's adapter once the practices are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pms_drivers.base import PmsDriver
from reconciler.api.spec import DocumentType, PracticeSpec, WritebackType


@dataclass(frozen=True)
class WritebackTarget:
    """What the writeback path needs to know about one practice, right now."""

    key: str  # namespace/name of the resource (or file-based key in local mode)
    spec: PracticeSpec
    #: The verified active provider id, or None when the provider is not (yet) verified.
    provider_id: str | None
    #: Whether the PMS's providers, note types and document categories have been read (since
    #: the process started or the practice moved to another PMS). False makes a missing
    #: provider or id "unknown", not "not verified".
    checked: bool = False
    #: Resolved PMS note type id for each allowed writeback type whose name resolved.
    note_type_ids: Mapping[WritebackType, str] = field(default_factory=dict)
    #: Resolved PMS document category id (the `writeTo` mapping) per document type.
    document_category_ids: Mapping[DocumentType, str] = field(default_factory=dict)
    #: The practice's driver; None while the PMS has not been reached yet.
    driver: PmsDriver | None = None

    @property
    def practice_id(self) -> str:
        return self.spec.practice_id


class PracticeDirectory(Protocol):
    """Looks practices up by `spec.practiceId`; implemented by the engine."""

    def target(self, practice_id: str) -> WritebackTarget | None: ...


@runtime_checkable
class LoadingDirectory(PracticeDirectory, Protocol):
    """A directory that can say it has not loaded every practice yet."""

    def not_ready(self) -> str | None:
        """None once every practice is loaded; until then, why not (one sentence)."""
        ...


@runtime_checkable
class FetchingDirectory(PracticeDirectory, Protocol):
    """A directory whose lookups may have to ask elsewhere (the intake process asks the engine's
    process for a practice it holds no snapshot of): the API awaits `fetch` instead of `target`."""

    async def fetch(self, practice_id: str) -> WritebackTarget | None:
        """`target(practice_id)`, asking the practices' owner when it is not held here."""
        ...

    async def fetch_not_ready(self) -> str | None:
        """`not_ready()` as the practices' owner says it now."""
        ...


def not_ready(directory: PracticeDirectory) -> str | None:
    """Why `directory` is not ready yet, or None (a plain `PracticeDirectory` always is)."""
    return directory.not_ready() if isinstance(directory, LoadingDirectory) else None


class StartupGate:
    """A `LoadingDirectory` over `inner`: not ready (saying `loading`) until `loaded()`.

    Lookups always go to `inner` (a practice already loaded is served at once). The state is
    one attribute, read by the API's thread and written by the event loop's: a plain store is
    atomic, so no lock.
    """

    def __init__(self, inner: PracticeDirectory, loading: str | None) -> None:
        self.inner = inner
        self._loading = loading

    def target(self, practice_id: str) -> WritebackTarget | None:
        return self.inner.target(practice_id)

    def not_ready(self) -> str | None:
        return self._loading

    def loaded(self) -> None:
        """Every practice is loaded: unknown practice ids are 404 from now on."""
        self._loading = None
