"""The PracticeCatalog resource: what one practice's PMS offers, as frozen values and as JSON.

A catalog lists the names a PracticeWriteback may use for its practice (providers with their
active flag, note types, document categories with what each may be used for), the PMS version
when the PMS reports one, and when the PMS was read. The engine builds it from what a reconcile
read (`reconciler.engine.catalog.catalog_from`); the operator publishes it as a `PracticeCatalog`
object (same namespace and name as the PracticeWriteback), `pmsctl up` as a JSON file; `pmsctl
catalog` reads and exports them and `pmsctl plan` resolves a change's names against them without
PMS credentials.

    catalog.to_object()            # the PracticeCatalog object (apiVersion, kind, metadata, ...)
    Catalog.from_object(obj)       # and back; ValueError naming the field that is wrong
    catalogs_from_document(doc)    # a single object or a PracticeCatalogList (an export)

Values only: no files, no cluster here (those are the adapters' and the CLI's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from reconciler import GROUP

CATALOG_KIND = "PracticeCatalog"
CATALOG_LIST_KIND = "PracticeCatalogList"
CATALOG_PLURAL = "practicecatalogs"
#: PracticeCatalog has one version of its own, whatever PracticeWriteback's versions are.
CATALOG_VERSION = "v1alpha1"
CATALOG_API_VERSION = f"{GROUP}/{CATALOG_VERSION}"


class DocumentUse(StrEnum):
    """What a document category may be used for: `writeTo`, `readFrom`, or patient photos."""

    WRITE = "write"
    READ = "read"
    PATIENT_PHOTOS = "patientPhotos"


@dataclass(frozen=True)
class CatalogProvider:
    id: str
    name: str
    active: bool


@dataclass(frozen=True)
class CatalogNoteType:
    id: str
    name: str
    hidden: bool = False


@dataclass(frozen=True)
class CatalogDocumentCategory:
    id: str
    name: str
    hidden: bool = False
    #: Empty for a hidden category: the engine refuses hidden categories for every use.
    uses: tuple[DocumentUse, ...] = ()


@dataclass(frozen=True)
class Catalog:
    """One practice's catalog. `read_at` is RFC 3339 (when the PMS answered these lists)."""

    namespace: str
    name: str
    practice_id: str
    pms_type: str
    read_at: str
    pms_version: str | None = None
    providers: tuple[CatalogProvider, ...] = ()
    note_types: tuple[CatalogNoteType, ...] = ()
    document_categories: tuple[CatalogDocumentCategory, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def content(self) -> dict[str, Any]:
        """What the PMS offers (everything but `readAt`): equal content means no new write."""
        pms: dict[str, Any] = {"type": self.pms_type}
        if self.pms_version is not None:
            pms["version"] = self.pms_version
        return {
            "practiceId": self.practice_id,
            "pms": pms,
            "providers": [{"id": p.id, "name": p.name, "active": p.active} for p in self.providers],
            "noteTypes": [
                {"id": t.id, "name": t.name, "hidden": t.hidden} for t in self.note_types
            ],
            "documentCategories": [
                {"id": c.id, "name": c.name, "hidden": c.hidden, "uses": [str(u) for u in c.uses]}
                for c in self.document_categories
            ],
        }

    def to_object(self) -> dict[str, Any]:
        """The PracticeCatalog object (no ownerReferences: the operator adds its own)."""
        return {
            "apiVersion": CATALOG_API_VERSION,
            "kind": CATALOG_KIND,
            "metadata": {"namespace": self.namespace, "name": self.name},
            **self.content(),
            "readAt": self.read_at,
            "summary": {
                "providers": len(self.providers),
                "noteTypes": len(self.note_types),
                "documentCategories": len(self.document_categories),
            },
        }

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Catalog:
        """Read a PracticeCatalog object; ValueError naming what is missing or mistyped."""
        try:
            meta = obj["metadata"]
            pms = obj["pms"]
            return cls(
                namespace=str(meta.get("namespace") or "default"),
                name=str(meta["name"]),
                practice_id=str(obj.get("practiceId", "")),
                pms_type=str(pms["type"]),
                pms_version=str(pms["version"]) if pms.get("version") is not None else None,
                read_at=str(obj["readAt"]),
                providers=tuple(
                    CatalogProvider(str(p["id"]), str(p["name"]), bool(p.get("active", True)))
                    for p in obj.get("providers") or ()
                ),
                note_types=tuple(
                    CatalogNoteType(str(t["id"]), str(t["name"]), bool(t.get("hidden", False)))
                    for t in obj.get("noteTypes") or ()
                ),
                document_categories=tuple(
                    CatalogDocumentCategory(
                        str(c["id"]),
                        str(c["name"]),
                        bool(c.get("hidden", False)),
                        tuple(DocumentUse(u) for u in c.get("uses") or ()),
                    )
                    for c in obj.get("documentCategories") or ()
                ),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            name = (obj.get("metadata") or {}).get("name", "?") if isinstance(obj, Mapping) else "?"
            raise ValueError(f"{CATALOG_KIND} {name}: missing or mistyped field {exc}") from None

    def read_at_time(self) -> datetime | None:
        """`read_at` as an aware datetime (None when it cannot be parsed)."""
        try:
            return datetime.fromisoformat(self.read_at.replace("Z", "+00:00"))
        except ValueError:
            return None


def catalog_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name` of a PracticeCatalog object, without reading the rest of it."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def catalogs_from_document(doc: Any) -> Iterator[Mapping[str, Any]]:
    """The PracticeCatalog objects in a parsed file: one object, or a List (an export)."""
    if not isinstance(doc, Mapping):
        raise ValueError("not a PracticeCatalog or PracticeCatalogList object")
    if doc.get("kind") in (CATALOG_LIST_KIND, "List"):
        for item in doc.get("items") or ():
            if isinstance(item, Mapping) and item.get("kind", CATALOG_KIND) == CATALOG_KIND:
                yield item
    elif doc.get("kind") == CATALOG_KIND:
        yield doc
    else:
        raise ValueError(f"kind {doc.get('kind')!r} is not {CATALOG_KIND} or {CATALOG_LIST_KIND}")


def catalog_list(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A PracticeCatalogList holding `objects` (sorted by key): the export format."""
    items = sorted(objects, key=catalog_key)
    return {"apiVersion": CATALOG_API_VERSION, "kind": CATALOG_LIST_KIND, "items": list(items)}


#: One item line of `dump_catalog_list`'s output, and its identity.
_ITEM_LINE = re.compile(r'^\{.*"metadata":\{"namespace":"([^"\\]*)","name":"([^"\\]*)"\}.*\},?$')
_LIST_HEAD = json.dumps(
    {"apiVersion": CATALOG_API_VERSION, "kind": CATALOG_LIST_KIND, "items": []},
    separators=(",", ":"),
)[:-2]


def dump_catalog_list(objects: Sequence[Mapping[str, Any]]) -> str:
    """The export as compact JSON with one catalog a line: valid JSON for any reader, and
    `CatalogIndex` finds a practice's line without parsing the other thousands."""
    items = catalog_list(objects)["items"]
    lines = [json.dumps(o, separators=(",", ":")) for o in items]
    return _LIST_HEAD + "\n" + ",\n".join(lines) + "\n]}\n"


class CatalogIndex(Mapping[str, Mapping[str, Any]]):
    """PracticeCatalog objects by `namespace/name`, parsed when first looked up.

    `CatalogIndex.from_text(text)` reads an export: `dump_catalog_list`'s layout is indexed by
    line (a 10,000-practice export is read in a few milliseconds and only the practices a
    change touches are parsed); any other JSON or YAML is parsed whole."""

    def __init__(self, raw: Mapping[str, str | Mapping[str, Any]]) -> None:
        self._raw = dict(raw)

    @classmethod
    def from_objects(cls, objects: Iterator[Mapping[str, Any]]) -> CatalogIndex:
        return cls({catalog_key(o): o for o in objects})

    @classmethod
    def from_text(cls, text: str) -> CatalogIndex:
        """ValueError when the text is not a PracticeCatalog or PracticeCatalogList."""
        lines = text.splitlines()
        if len(lines) >= 2 and lines[0] == _LIST_HEAD and lines[-1] == "]}":
            raw: dict[str, str | Mapping[str, Any]] = {}
            for line in lines[1:-1]:
                m = _ITEM_LINE.match(line)
                if m is None:
                    break
                raw[f"{m.group(1)}/{m.group(2)}"] = line.removesuffix(",")
            else:
                return cls(raw)
        import yaml

        try:
            doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from exc
        return cls.from_objects(catalogs_from_document(doc))

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        value = self._raw[key]
        if isinstance(value, str):
            value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError(f"{key}: not a PracticeCatalog object")
            self._raw[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def content_hash(catalog: Catalog) -> str:
    """A short, stable digest of the catalog's content (not of `read_at`)."""
    import hashlib

    text = json.dumps(catalog.content(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
