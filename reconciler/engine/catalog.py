"""A practice's catalog from what a reconcile read, and when to hand it to the adapters.

Pure: `catalog_from(key, spec, observed)` turns the PMS lists a reconcile (or drift check) read
into a `reconciler.api.catalog.Catalog`; `publish_due` says whether the adapter should write it
now. The engine calls its `CatalogListener` (the operator's `reconciler.kube.catalog.CatalogWriter`,
`pmsctl up`'s `reconciler.local.catalogs.LocalCatalogs`) with the catalog when it is due, and with
None when the practice is removed.

Writes stay few: a catalog is due when its content changed (`content_hash`), or when the last
write is `refresh_seconds` old, so `readAt` says how fresh the lists are (`pmsctl plan` warns on
a catalog older than an hour) without a write on every 30 s drift check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from reconciler.api.catalog import (
    Catalog,
    CatalogDocumentCategory,
    CatalogNoteType,
    CatalogProvider,
    DocumentUse,
    content_hash,
)
from reconciler.api.spec import PracticeSpec
from reconciler.engine.core import Observed, rfc3339

#: Called with (key, catalog) when a catalog is due, (key, None) when the practice is removed.
CatalogListener = Callable[[str, Catalog | None], Awaitable[None]]

#: Seconds after which an unchanged catalog is written again, to move its `readAt`.
REFRESH_SECONDS = 600.0

#: The document-category flag letter that marks the patient-pictures folder (Open Dental).
_PHOTOS_FLAG = "P"


def catalog_from(key: str, spec: PracticeSpec, observed: Observed) -> Catalog | None:
    """The catalog of practice `key` (`namespace/name`), or None when the PMS lists were never
    read (a failed first reconcile, a duplicate practice)."""
    if (
        observed.checked_at is None
        or observed.providers is None
        or observed.note_types is None
        or observed.document_categories is None
    ):
        return None
    namespace, _, name = key.partition("/")
    categories = []
    for c in observed.document_categories:
        uses: tuple[DocumentUse, ...] = ()
        if not c.hidden:
            uses = (DocumentUse.WRITE, DocumentUse.READ)
            if _PHOTOS_FLAG in c.flags:
                uses += (DocumentUse.PATIENT_PHOTOS,)
        categories.append(CatalogDocumentCategory(c.id, c.name, c.hidden, uses))
    return Catalog(
        namespace=namespace,
        name=name,
        practice_id=spec.practice_id,
        pms_type=str(spec.pms.type),
        pms_version=observed.pms_version or None,
        read_at=rfc3339(observed.checked_at),
        providers=tuple(CatalogProvider(p.id, p.name, p.active) for p in observed.providers),
        note_types=tuple(CatalogNoteType(t.id, t.name, t.hidden) for t in observed.note_types),
        document_categories=tuple(categories),
    )


@dataclass(frozen=True)
class Published:
    """The last catalog handed to the listener: its content hash and the clock time."""

    digest: str
    at: float


def publish_due(
    last: Published | None, catalog: Catalog, now: float, refresh_seconds: float = REFRESH_SECONDS
) -> Published | None:
    """The new `Published` when `catalog` should be written now, else None."""
    digest = content_hash(catalog)
    if last is None or last.digest != digest or now - last.at >= refresh_seconds:
        return Published(digest, now)
    return None
