"""The PMS records: one `PmsRecord` per supported PMS, registered by name with `register()`.

    register(PmsRecord(
        name="OpenDental",                                   # the spec.pms.type value
        display_name="Open Dental",                          # what messages call it
        driver="pms_drivers.opendental:OpenDentalDriver",    # the driver factory, by import path
        reached_through="the Open Dental API",
        provider_id=ProviderIdRule(r"^[1-9][0-9]{0,9}$", "a ProvNum: ...", ("1",)),
        catalog=CatalogShape(note_type="commlog type", document_category="image category"),
    ))

Everything else follows from the records: `pms_drivers.registry.create_driver` builds the driver,
`reconciler.api.crdgen` writes the schema's `spec.pms.type` enum and providerId rules (and so the
CRD's CEL rules), `reconciler.api.spec.PmsType` accepts exactly the registered names, and the core
words its messages with the display name and catalog nouns. The simulator keeps its own
personality per name (`pms_simulator.personality`); a test proves both registries name the same
PMSes. docs/adding-a-pms.md lists the files a new PMS touches.

This module is plain data on purpose: the pure core and the schema generator read it, so it
imports no driver module and no HTTP library (the driver is named by import path and loaded by
the registry only when a practice needs it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

#: The schema's maxLength for spec.providerId; every rule's examples must fit in it.
PROVIDER_ID_MAX_LENGTH = 10

_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{0,31}$")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ProviderIdRule:
    """What a provider id of this PMS looks like: an anchored regex, its wording, examples."""

    pattern: str
    #: Completes "providerId is ...", e.g. "1-10 letters or digits".
    summary: str
    examples: tuple[str, ...]

    def message(self, pms: str) -> str:
        """The message the schema and the CRD give for a providerId that does not match."""
        return f'for {pms}, providerId is {self.summary} (for example "{self.examples[0]}")'


@dataclass(frozen=True)
class CatalogShape:
    """What the PMS calls its note types and its document categories (words used in messages)."""

    note_type: str
    document_category: str


@dataclass(frozen=True)
class PmsRecord:
    """One PMS: its spec.pms.type name and everything the product derives from it."""

    name: str
    display_name: str
    #: "module:attribute" of a `pms_drivers.registry.Factory` (usually the driver class).
    driver: str
    #: How the operator reaches it, completing "reached through ...", e.g. "the bridge agent".
    reached_through: str
    provider_id: ProviderIdRule
    catalog: CatalogShape


#: spec.pms.type -> record, in registration order (the schema enum's order).
RECORDS: dict[str, PmsRecord] = {}


def _check(record: PmsRecord) -> None:
    if not _NAME.match(record.name):
        raise ValueError(f"PMS name {record.name!r} must be CamelCase letters and digits")
    if not _IMPORT_PATH.match(record.driver):
        raise ValueError(f"{record.name}: driver {record.driver!r} is not a 'module:attribute'")
    rule = record.provider_id
    if not (rule.pattern.startswith("^") and rule.pattern.endswith("$")):
        raise ValueError(f"{record.name}: the providerId pattern must be anchored with ^ and $")
    compiled = re.compile(rule.pattern)
    if not rule.examples:
        raise ValueError(f"{record.name}: the providerId rule needs at least one example")
    for example in rule.examples:
        if not compiled.match(example) or len(example) > PROVIDER_ID_MAX_LENGTH:
            raise ValueError(
                f"{record.name}: example providerId {example!r} does not match "
                f"{rule.pattern} within {PROVIDER_ID_MAX_LENGTH} characters"
            )


def register(record: PmsRecord) -> PmsRecord:
    """Add a PMS (checked: name, import path, anchored rule whose examples match). Registering
    the same record twice is a no-op; another record under a taken name is a ValueError."""
    _check(record)
    known = RECORDS.get(record.name)
    if known is not None and known != record:
        raise ValueError(f"PMS {record.name!r} is already registered with another record")
    RECORDS[record.name] = record
    return record


def unregister(name: str) -> None:
    """Forget a PMS (for tests that register a toy one); unknown names are ignored."""
    RECORDS.pop(name, None)


class RecordView(Mapping[str, str]):
    """A live read-only mapping name -> one field of each record (follows later registrations)."""

    def __init__(self, field: Callable[[PmsRecord], str]) -> None:
        self._field = field

    def __getitem__(self, name: str) -> str:
        return self._field(RECORDS[name])

    def __iter__(self) -> Iterator[str]:
        return iter(RECORDS)

    def __len__(self) -> int:
        return len(RECORDS)


register(
    PmsRecord(
        name="OpenDental",
        display_name="Open Dental",
        driver="pms_drivers.opendental:OpenDentalDriver",
        reached_through="the Open Dental API",
        provider_id=ProviderIdRule(
            r"^[1-9][0-9]{0,9}$", "a ProvNum: 1-10 digits, not starting with 0", ("1", "12")
        ),
        catalog=CatalogShape(note_type="commlog type", document_category="image category"),
    )
)
register(
    PmsRecord(
        name="Eaglesoft",
        display_name="Eaglesoft",
        driver="pms_drivers.bridge:EaglesoftDriver",
        reached_through="the bridge agent",
        provider_id=ProviderIdRule(r"^[A-Za-z0-9]{1,10}$", "1-10 letters or digits", ("DCM",)),
        catalog=CatalogShape(note_type="note type", document_category="document group"),
    )
)
register(
    PmsRecord(
        name="Dentrix",
        display_name="Dentrix",
        driver="pms_drivers.bridge:DentrixDriver",
        reached_through="the bridge agent",
        provider_id=ProviderIdRule(
            r"^[A-Za-z0-9_-]{4,10}$", "4-10 letters, digits, '_' or '-'", ("DDS1", "HYG_22")
        ),
        catalog=CatalogShape(note_type="note type", document_category="document type"),
    )
)
