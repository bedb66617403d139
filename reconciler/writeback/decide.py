"""The writeback decision: given a request and the practice's current target, write, skip or wait.

Pure: a function over plain values, tested with tables (`tests/test_writeback_decide.py`). The
checks run in this order, and the first that fails names the skip reason:

    practice unknown -> suspended -> not allowed by the spec -> provider not verified
    -> note type (or document category) not resolved in the PMS

An allowed and resolved request becomes `Write(type_id, provider_id)`: the resolved PMS note type
id (or document category id) and the verified provider.

Only the spec or an answer from the PMS skips a request. When the PMS has not been read yet
(`WritebackTarget.checked` is False: it is down, or refuses the credentials, since the process
started) a request the spec allows becomes `Wait`: it is stored `pending` without a type id, and
the drainer decides it again once the practice has been checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.api.spec import DocumentType, WritebackType
from reconciler.writeback.model import Kind, SkipReason, WritebackRequest
from reconciler.writeback.target import WritebackTarget


@dataclass(frozen=True)
class Write:
    """Write it: under this note type (or document category) id, as this provider."""

    type_id: str
    provider_id: str


@dataclass(frozen=True)
class Skip:
    """Record it as skipped, not written, and say why."""

    reason: SkipReason
    message: str


@dataclass(frozen=True)
class Wait:
    """Not decidable yet: the PMS has not answered since start. Keep it pending, decide later."""

    message: str


Decision = Write | Skip | Wait


def decide(request: WritebackRequest, target: WritebackTarget | None) -> Decision:
    """Decide one request by the practice's spec and what the engine resolved in its PMS."""
    if target is None:
        return Skip(
            SkipReason.PRACTICE_UNKNOWN,
            f"no practice has practiceId {request.practice_id!r}",
        )
    spec = target.spec
    if spec.suspend:
        return Skip(SkipReason.SUSPENDED, f"practice {target.key} is suspended (spec.suspend)")
    if request.kind is Kind.NOTE:
        return _decide_note(WritebackType(request.type), target)
    return _decide_document(DocumentType(request.type), target)


def _decide_note(kind: WritebackType, target: WritebackTarget) -> Decision:
    setting = target.spec.writeback.get(kind)
    if setting is None or not setting.allow:
        return Skip(
            SkipReason.NOT_ALLOWED,
            f"spec.writeback.{kind.value}.allow is not true for {target.key}",
        )
    if not setting.note_type:
        return Skip(
            SkipReason.NOTE_TYPE_UNRESOLVED,
            f"spec.writeback.{kind.value}.noteType is not set for {target.key}",
        )
    if target.provider_id is None:
        return _provider_skip(target)
    type_id = target.note_type_ids.get(kind)
    if type_id is None:
        if not target.checked:
            return _wait(target)
        return Skip(
            SkipReason.NOTE_TYPE_UNRESOLVED,
            f"note type {setting.note_type!r} (spec.writeback.{kind.value}.noteType) is not "
            f"resolved in the PMS of {target.key}",
        )
    return Write(type_id=type_id, provider_id=target.provider_id)


def _decide_document(kind: DocumentType, target: WritebackTarget) -> Decision:
    mapping = target.spec.documents.get(kind)
    if mapping is None or not mapping.write_to:
        return Skip(
            SkipReason.NOT_ALLOWED,
            f"spec.documents.{kind.value}.writeTo is not set for {target.key}",
        )
    if target.provider_id is None:
        return _provider_skip(target)
    category_id = target.document_category_ids.get(kind)
    if category_id is None:
        if not target.checked:
            return _wait(target)
        return Skip(
            SkipReason.DOCUMENT_TYPE_UNRESOLVED,
            f"document category {mapping.write_to!r} (spec.documents.{kind.value}.writeTo) is "
            f"not resolved in the PMS of {target.key}",
        )
    return Write(type_id=category_id, provider_id=target.provider_id)


def _provider_skip(target: WritebackTarget) -> Skip | Wait:
    if not target.checked:
        return _wait(target)
    return Skip(
        SkipReason.PROVIDER_NOT_VERIFIED,
        f"provider {target.spec.provider_id!r} (spec.providerId) is not verified as an active "
        f"provider in the PMS of {target.key}",
    )


def _wait(target: WritebackTarget) -> Wait:
    return Wait(
        f"waiting for the PMS of {target.key} to answer (provider {target.spec.provider_id!r} "
        "and names not verified yet)"
    )
