"""What a change to PracticeWriteback resources does, as typed records and three renderings.

Pure: `diff_practices(base, head)` takes two mappings of `Resource` keyed by identity
(`namespace/name`, never by file) and returns a `DiffReport`; `render_text`, `render_markdown` and
`render_json` turn a report into strings. No git, no files, no Kubernetes here: the sources
(`reconciler.review.gitsource`, the live reader in `reconciler.cli.diff`) build the mappings.

Specs are compared through `reconciler.api.spec.PracticeSpec`, so the product defaults apply on both
sides: spelling out a default, reordering keys, quoting or commenting is "no change", and so is a
setting that has no effect (a note type under a disallowed writeback, the interval of a disabled
sync) and a pure apiVersion bump (`PracticeSpec.from_resource` converts v1alpha1 to v1 first).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.api.spec import (
    DEFAULT_INTERVALS,
    DocumentMapping,
    DocumentType,
    PracticeSpec,
    SyncKind,
    SyncSetting,
    WritebackSetting,
    WritebackType,
    format_duration,
)

#: A JSON-friendly scalar for the before/after of a change.
Value = str | int | float | bool | None

#: GitHub refuses comment bodies over 65,536 characters; stay well below.
MARKDOWN_LIMIT = 60_000


@dataclass(frozen=True)
class Resource:
    """One PracticeWriteback as a diff side sees it: identity, where it came from, its spec.

    `file` is the repository path for a file source and None for a live object; `line` is the
    line where the document starts (1 for live objects).
    """

    namespace: str
    name: str
    spec: PracticeSpec
    file: str | None = None
    line: int = 1

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ChangeKind(StrEnum):
    """Every kind of change the renderer names; the value is the summary table's label."""

    ADDED = "practice added"
    REMOVED = "practice removed"
    RENAMED = "resource renamed"
    MOVED = "file moved"
    PRACTICE_ID = "practice id changed"
    DISPLAY_NAME = "display name changed"
    PMS_TYPE = "PMS type changed"
    PMS_URL = "PMS URL changed"
    PMS_SECRET = "credentials Secret changed"
    PMS_TIMEOUT = "PMS timeout changed"
    PROVIDER = "provider changed"
    WRITEBACK_ENABLED = "writeback enabled"
    WRITEBACK_DISABLED = "writeback disabled"
    WRITEBACK_NOTE_TYPE = "writeback note type changed"
    DOCUMENTS = "document mapping changed"
    SYNC_ENABLED = "sync enabled"
    SYNC_DISABLED = "sync disabled"
    SYNC_INTERVAL = "sync interval changed"
    PHOTOS_ENABLED = "profile photos enabled"
    PHOTOS_DISABLED = "profile photos disabled"
    SUSPENDED = "suspended"
    RESUMED = "resumed"


class Risk(StrEnum):
    """Changes a reviewer should look at twice; the value is the flag's text."""

    WRITEBACK_OFF = "writeback turned off"
    PROVIDER_CHANGED = "provider changed"
    INTERVAL_BELOW_DEFAULT = "poll interval below the product default"
    PMS_URL_CHANGED = "PMS URL changed"
    PRACTICE_REMOVED = "practice removed"


class DiffStatus(StrEnum):
    """How one practice differs between the base and the head (git's name-status, per practice);
    not the resource's `status`, which is `reconciler.engine.core.PracticeStatus`."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"
    RENAMED = "renamed"
    MOVED = "moved"  # only the file changed: nothing in the cluster would change


@dataclass(frozen=True)
class Change:
    """One meaningful change of one practice. `field` names the setting (`spec.sync.patients`)."""

    kind: ChangeKind
    message: str
    field: str
    before: Value = None
    after: Value = None
    risk: Risk | None = None
    #: For poll interval changes: the factor by which PMS reads grow (2.0 means twice the load).
    load_factor: float | None = None

    @property
    def effective(self) -> bool:
        """False for changes that alter nothing in the cluster (a file move)."""
        return self.kind is not ChangeKind.MOVED


@dataclass(frozen=True)
class PracticeDiff:
    """Every change of one identity. `key` is the head identity (the base one when removed)."""

    key: str
    namespace: str
    name: str
    practice_id: str
    status: DiffStatus
    changes: tuple[Change, ...]
    base_file: str | None = None
    head_file: str | None = None
    base_key: str | None = None  # set when renamed

    @property
    def risks(self) -> tuple[Risk, ...]:
        seen: dict[Risk, None] = {}
        for c in self.changes:
            if c.risk is not None:
                seen[c.risk] = None
        return tuple(seen)

    @property
    def effective(self) -> bool:
        return any(c.effective for c in self.changes)


@dataclass(frozen=True)
class DiffReport:
    """The outcome of a diff: the practices that differ (sorted by key) and the totals."""

    practices: tuple[PracticeDiff, ...]
    unchanged: int
    base_label: str = "base"
    head_label: str = "head"
    kind_counts: Mapping[ChangeKind, int] = field(default_factory=dict)
    risk_counts: Mapping[Risk, int] = field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        """True when applying head would change something (moves alone do not)."""
        return any(p.effective for p in self.practices)

    @property
    def risky(self) -> tuple[PracticeDiff, ...]:
        return tuple(p for p in self.practices if p.risks)

    def count(self, status: DiffStatus) -> int:
        return sum(1 for p in self.practices if p.status is status)


# --- words -------------------------------------------------------------------------------------

WRITEBACK_WORDS: dict[WritebackType, str] = {
    WritebackType.OUTGOING_SMS: "outgoing SMS",
    WritebackType.INCOMING_SMS: "incoming SMS",
    WritebackType.OUTGOING_EMAIL: "outgoing email",
    WritebackType.INCOMING_CALL: "incoming call",
    WritebackType.OUTGOING_CALL: "outgoing call",
    WritebackType.MISSED_CALL: "missed call",
    WritebackType.PATIENT_NOTE: "patient note",
    WritebackType.TASK_NOTE: "task note",
    WritebackType.INSURANCE_VERIFICATION: "insurance verification",
}
DOCUMENT_WORDS: dict[DocumentType, str] = {
    DocumentType.INSURANCE_VERIFICATION: "insurance verification",
    DocumentType.ACCOUNT_STATEMENT: "account statement",
}
SYNC_WORDS: dict[SyncKind, str] = {
    SyncKind.APPOINTMENT_STATUS: "appointment status",
    SyncKind.APPOINTMENTS: "appointments",
    SyncKind.PATIENTS: "patients",
}


def _q(value: object) -> str:
    return "none" if value is None else f"'{value}'"


def _interval(seconds: float) -> str:
    """Seconds below two minutes as `60s`/`90s` (how the defaults are written), else Go-style."""
    if seconds < 120 and seconds == int(seconds):
        return f"{int(seconds)}s"
    return format_duration(seconds)


def _factor(x: float) -> str:
    return f"{round(x, 2):g}x"


# --- comparing one practice -------------------------------------------------------------------

_NO_WRITEBACK = WritebackSetting(allow=False)
_NO_DOCUMENTS = DocumentMapping()


def _writeback_changes(base: PracticeSpec, head: PracticeSpec) -> list[Change]:
    out: list[Change] = []
    for wt in WritebackType:
        b = base.writeback.get(wt, _NO_WRITEBACK)
        h = head.writeback.get(wt, _NO_WRITEBACK)
        words, path = WRITEBACK_WORDS[wt], f"spec.writeback.{wt.value}"
        if b.allow and not h.allow:
            out.append(
                Change(
                    ChangeKind.WRITEBACK_DISABLED,
                    f"{words} writeback disabled (was note type {_q(b.note_type)})",
                    path,
                    b.note_type,
                    None,
                    risk=Risk.WRITEBACK_OFF,
                )
            )
        elif h.allow and not b.allow:
            out.append(
                Change(
                    ChangeKind.WRITEBACK_ENABLED,
                    f"{words} writeback enabled (note type {_q(h.note_type)})",
                    path,
                    None,
                    h.note_type,
                )
            )
        elif b.allow and h.allow and b.note_type != h.note_type:
            out.append(
                Change(
                    ChangeKind.WRITEBACK_NOTE_TYPE,
                    f"{words} writeback note type {_q(b.note_type)} -> {_q(h.note_type)}",
                    f"{path}.noteType",
                    b.note_type,
                    h.note_type,
                )
            )
    return out


def _names(value: str | tuple[str, ...] | None) -> str | None:
    """A category name, or the further v1 readFrom categories as one list (None when empty)."""
    if isinstance(value, tuple):
        return ", ".join(value) or None
    return value


def _document_changes(base: PracticeSpec, head: PracticeSpec) -> list[Change]:
    out: list[Change] = []
    for dt in DocumentType:
        b = base.documents.get(dt, _NO_DOCUMENTS)
        h = head.documents.get(dt, _NO_DOCUMENTS)
        words = DOCUMENT_WORDS[dt]
        for attr, field_name, verb in (
            ("write_to", "writeTo", "written to"),
            ("read_from", "readFrom", "read from"),
            ("read_from_more", "readFrom", "also read from"),
        ):
            bv, hv = _names(getattr(b, attr)), _names(getattr(h, attr))
            if bv == hv:
                continue
            if bv is None:
                text = f"{words} documents now {verb} {_q(hv)}"
            elif hv is None:
                text = f"{words} documents no longer {verb} {_q(bv)}"
            else:
                text = f"{words} documents {verb} {_q(bv)} -> {_q(hv)}"
            out.append(
                Change(
                    ChangeKind.DOCUMENTS, text, f"spec.documents.{dt.value}.{field_name}", bv, hv
                )
            )
    return out


def _sync_changes(base: PracticeSpec, head: PracticeSpec) -> list[Change]:
    out: list[Change] = []
    for kind in SyncKind:
        default = float(DEFAULT_INTERVALS[kind])
        off = SyncSetting(enabled=False, interval_seconds=default)
        b, h = base.sync.get(kind, off), head.sync.get(kind, off)
        words, path = SYNC_WORDS[kind], f"spec.sync.{kind.value}"
        below = Risk.INTERVAL_BELOW_DEFAULT if h.enabled and h.interval_seconds < default else None
        if h.enabled and not b.enabled:
            out.append(
                Change(
                    ChangeKind.SYNC_ENABLED,
                    f"{words} sync enabled (every {_interval(h.interval_seconds)})",
                    path,
                    None,
                    _interval(h.interval_seconds),
                    risk=below,
                )
            )
        elif b.enabled and not h.enabled:
            out.append(
                Change(
                    ChangeKind.SYNC_DISABLED,
                    f"{words} sync disabled (was every {_interval(b.interval_seconds)})",
                    path,
                    _interval(b.interval_seconds),
                    None,
                )
            )
        elif b.enabled and h.enabled and b.interval_seconds != h.interval_seconds:
            factor = b.interval_seconds / h.interval_seconds
            bs, hs = _interval(b.interval_seconds), _interval(h.interval_seconds)
            out.append(
                Change(
                    ChangeKind.SYNC_INTERVAL,
                    f"{words} poll interval {bs} -> {hs} ({_factor(factor)} PMS read load)",
                    f"{path}.interval",
                    bs,
                    hs,
                    risk=below if h.interval_seconds < b.interval_seconds else None,
                    load_factor=factor,
                )
            )
    return out


def compare_specs(base: PracticeSpec, head: PracticeSpec) -> list[Change]:
    """The meaningful changes from `base` to `head`, in a stable reading order."""
    if base == head:
        return []
    out: list[Change] = []

    def simple(
        kind: ChangeKind, path: str, text: str, b: Value, h: Value, risk: Risk | None = None
    ) -> None:
        if b != h:
            out.append(Change(kind, f"{text} {_q(b)} -> {_q(h)}", path, b, h, risk=risk))

    if base.suspend != head.suspend:
        out.append(
            Change(
                ChangeKind.SUSPENDED if head.suspend else ChangeKind.RESUMED,
                "suspended" if head.suspend else "resumed",
                "spec.suspend",
                base.suspend,
                head.suspend,
            )
        )
    simple(
        ChangeKind.PRACTICE_ID, "spec.practiceId", "practice id", base.practice_id, head.practice_id
    )
    simple(
        ChangeKind.DISPLAY_NAME,
        "spec.displayName",
        "display name",
        base.display_name,
        head.display_name,
    )
    simple(ChangeKind.PMS_TYPE, "spec.pms.type", "PMS type", base.pms.type, head.pms.type)
    simple(
        ChangeKind.PMS_URL,
        "spec.pms.url",
        "PMS URL",
        base.pms.url,
        head.pms.url,
        risk=Risk.PMS_URL_CHANGED,
    )
    simple(
        ChangeKind.PMS_SECRET,
        "spec.pms.credentialsSecretRef.name",
        "credentials Secret",
        base.pms.credentials_secret,
        head.pms.credentials_secret,
    )
    if base.pms.timeout_seconds != head.pms.timeout_seconds:
        b, h = base.pms.timeout_seconds, head.pms.timeout_seconds
        out.append(
            Change(
                ChangeKind.PMS_TIMEOUT, f"PMS timeout {b}s -> {h}s", "spec.pms.timeoutSeconds", b, h
            )
        )
    if base.provider_id != head.provider_id:
        b_id, h_id = base.provider_id, head.provider_id
        out.append(
            Change(
                ChangeKind.PROVIDER,
                f"provider {b_id} -> {h_id}",
                "spec.providerId",
                b_id,
                h_id,
                risk=Risk.PROVIDER_CHANGED,
            )
        )
    out += _writeback_changes(base, head)
    out += _document_changes(base, head)
    out += _sync_changes(base, head)
    if base.patient_profile_photos != head.patient_profile_photos:
        on = head.patient_profile_photos
        out.append(
            Change(
                ChangeKind.PHOTOS_ENABLED if on else ChangeKind.PHOTOS_DISABLED,
                f"patient profile photos {'enabled' if on else 'disabled'}",
                "spec.patientProfilePhotos",
                base.patient_profile_photos,
                on,
            )
        )
    return out


def describe(spec: PracticeSpec) -> str:
    """One line saying what a practice does, for added and removed practices."""
    parts = [f"{spec.pms.type.value} at {spec.pms.url}", f"provider {spec.provider_id}"]
    notes = sorted(WRITEBACK_WORDS[w] for w in spec.allowed_note_types())
    parts.append("writes back " + ", ".join(notes) if notes else "no writeback")
    polls = [
        f"{SYNC_WORDS[k]} every {_interval(v)}" for k, v in sorted(spec.enabled_sync().items())
    ]
    parts.append("polls " + ", ".join(polls) if polls else "no sync")
    if spec.suspend:
        parts.append("suspended")
    return "; ".join(parts)


def _moved(b: Resource, h: Resource) -> list[Change]:
    if b.file is None or h.file is None or b.file == h.file:
        return []
    return [Change(ChangeKind.MOVED, f"moved {b.file} -> {h.file}", "file", b.file, h.file)]


def _practice(
    status: DiffStatus,
    changes: Sequence[Change],
    base: Resource | None,
    head: Resource | None,
) -> PracticeDiff:
    main = head or base
    assert main is not None
    return PracticeDiff(
        key=main.key,
        namespace=main.namespace,
        name=main.name,
        practice_id=main.spec.practice_id,
        status=status,
        changes=tuple(changes),
        base_file=base.file if base else None,
        head_file=head.file if head else None,
        base_key=base.key if base and status is DiffStatus.RENAMED else None,
    )


def diff_practices(
    base: Mapping[str, Resource],
    head: Mapping[str, Resource],
    *,
    base_label: str = "base",
    head_label: str = "head",
    identical: int = 0,
) -> DiffReport:
    """Compare two sides by identity. A removed and an added resource in the same namespace
    with the same `practiceId` are reported as one renamed resource. `identical` counts
    practices the caller left out because their files are byte-identical on both sides; they
    add to `unchanged`."""
    practices: list[PracticeDiff] = []
    unchanged = identical
    for key in sorted(base.keys() & head.keys()):
        b, h = base[key], head[key]
        changes = compare_specs(b.spec, h.spec)
        moved = _moved(b, h)
        if changes:
            practices.append(_practice(DiffStatus.CHANGED, moved + changes, b, h))
        elif moved:
            practices.append(_practice(DiffStatus.MOVED, moved, b, h))
        else:
            unchanged += 1

    removed = {k: base[k] for k in base.keys() - head.keys()}
    added = {k: head[k] for k in head.keys() - base.keys()}
    by_practice = {(r.namespace, r.spec.practice_id): k for k, r in removed.items()}
    for key in sorted(added):
        h = added[key]
        old_key = by_practice.pop((h.namespace, h.spec.practice_id), None)
        if old_key is None:
            continue
        b = removed.pop(old_key)
        del added[key]
        renamed = Change(
            ChangeKind.RENAMED,
            f"resource renamed {b.key} -> {h.key} (same practice id; kubectl apply creates "
            f"{h.key} and leaves {b.key} until it is deleted)",
            "metadata.name",
            b.key,
            h.key,
        )
        changes = [renamed, *_moved(b, h), *compare_specs(b.spec, h.spec)]
        practices.append(_practice(DiffStatus.RENAMED, changes, b, h))
    for h in added.values():
        change = Change(ChangeKind.ADDED, f"added: {describe(h.spec)}", "", None, h.key)
        practices.append(_practice(DiffStatus.ADDED, [change], None, h))
    for b in removed.values():
        change = Change(
            ChangeKind.REMOVED,
            f"removed (was: {describe(b.spec)})",
            "",
            b.key,
            None,
            risk=Risk.PRACTICE_REMOVED,
        )
        practices.append(_practice(DiffStatus.REMOVED, [change], b, None))

    practices.sort(key=lambda p: p.key)
    kinds: Counter[ChangeKind] = Counter()
    risks: Counter[Risk] = Counter()
    for p in practices:
        kinds.update({c.kind for c in p.changes})
        risks.update(p.risks)
    return DiffReport(
        practices=tuple(practices),
        unchanged=unchanged,
        base_label=base_label,
        head_label=head_label,
        kind_counts={k: kinds[k] for k in ChangeKind if kinds[k]},
        risk_counts={r: risks[r] for r in Risk if risks[r]},
    )


# --- renderers ---------------------------------------------------------------------------------


def _display_names(practices: Iterable[PracticeDiff]) -> dict[str, str]:
    """`name` when every practice shares one namespace, `namespace/name` otherwise."""
    items = list(practices)
    one_ns = len({p.namespace for p in items}) <= 1
    return {p.key: (p.name if one_ns else p.key) for p in items}


def summary_line(report: DiffReport) -> str:
    """`3 practices changed (1 added, 1 removed, 1 changed), 12 unchanged; 2 risky`."""
    n = len(report.practices)
    if not n:
        return f"no changes ({report.unchanged} practices unchanged)"
    parts = [f"{report.count(s)} {s.value}" for s in DiffStatus if report.count(s)]
    word = "practice differs" if n == 1 else "practices differ"
    risky = len(report.risky)
    tail = f"; {risky} risky" if risky else ""
    return f"{n} {word} ({', '.join(parts)}), {report.unchanged} unchanged{tail}"


def render_text(report: DiffReport) -> str:
    """One line per change, `name: change`, risky ones flagged; a summary at the end."""
    names = _display_names(report.practices)
    lines: list[str] = [f"# {report.base_label} -> {report.head_label}"]
    for p in report.practices:
        for c in p.changes:
            flag = f"  [RISK: {c.risk.value}]" if c.risk else ""
            lines.append(f"{names[p.key]}: {c.message}{flag}")
    lines.append("")
    lines.append(summary_line(report))
    for kind, count in report.kind_counts.items():
        lines.append(f"  {count:>6}  {kind.value}")
    if report.risk_counts:
        lines.append("risky:")
        for risk, count in report.risk_counts.items():
            lines.append(f"  {count:>6}  {risk.value}")
    return "\n".join(lines) + "\n"


_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<|"})


def _md(text: str) -> str:
    return text.translate(_MD_SPECIAL)


def render_markdown(report: DiffReport, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull request comment: headline, summary table, risky list, one details block per
    practice. Details stop before `limit` characters with a note saying how many were left out."""
    names = _display_names(report.practices)
    out: list[str] = ["<!-- pmsctl-diff -->", "### pmsctl diff", ""]
    out.append(f"`{_md(report.base_label)}` → `{_md(report.head_label)}`: {summary_line(report)}.")
    out.append("")
    if not report.practices:
        return "\n".join(out)
    out += ["| Change | Practices |", "|---|---:|"]
    for status in DiffStatus:
        if report.count(status):
            out.append(f"| {status.value} | {report.count(status)} |")
    for kind, count in report.kind_counts.items():
        if kind in (ChangeKind.ADDED, ChangeKind.REMOVED, ChangeKind.RENAMED, ChangeKind.MOVED):
            continue
        out.append(f"| {kind.value} | {count} |")
    out.append("")
    if report.risky:
        risky = report.risky
        word = "practice" if len(risky) == 1 else "practices"
        out.append(f"**:warning: {len(risky)} risky {word}**")
        out.append("")
        shown = [f"`{names[p.key]}` ({', '.join(r.value for r in p.risks)})" for p in risky[:20]]
        more = f" and {len(risky) - 20} more" if len(risky) > 20 else ""
        out.append(", ".join(shown) + more)
        out.append("")
        out += ["| Risk | Practices |", "|---|---:|"]
        out += [f"| :warning: {r.value} | {n} |" for r, n in report.risk_counts.items()]
        out.append("")
    out.append("#### Details")
    out.append("")
    size = sum(len(line) + 1 for line in out)
    for i, p in enumerate(report.practices):
        warn = " :warning:" if p.risks else ""
        files = p.head_file or p.base_file
        where = f" — <code>{html.escape(files)}</code>" if files else ""
        block = [
            f"<details><summary><code>{html.escape(names[p.key])}</code> {p.status.value}"
            f"{warn}{where}</summary>",
            "",
        ]
        for c in p.changes:
            flag = f" — :warning: **{c.risk.value}**" if c.risk else ""
            block.append(f"- {_md(c.message)}{flag}")
        block += ["", "</details>", ""]
        block_size = sum(len(line) + 1 for line in block)
        if size + block_size > limit:
            left = len(report.practices) - i
            out.append(
                f"_… {left} more practices not shown (comment size limit); "
                "run `pmsctl diff` for the full list._"
            )
            break
        out += block
        size += block_size
    return "\n".join(out)


def report_to_json(report: DiffReport) -> dict[str, object]:
    """The report as plain JSON values (the `-o json` shape)."""
    return {
        "base": report.base_label,
        "head": report.head_label,
        "hasChanges": report.has_changes,
        "summary": {
            **{s.value: report.count(s) for s in DiffStatus},
            "unchanged": report.unchanged,
            "risky": len(report.risky),
            "byKind": {k.name.lower(): n for k, n in report.kind_counts.items()},
            "byRisk": {r.name.lower(): n for r, n in report.risk_counts.items()},
        },
        "practices": [
            {
                "key": p.key,
                "namespace": p.namespace,
                "name": p.name,
                "practiceId": p.practice_id,
                "status": p.status.value,
                "baseKey": p.base_key,
                "baseFile": p.base_file,
                "headFile": p.head_file,
                "risks": [r.name.lower() for r in p.risks],
                "changes": [
                    {
                        "kind": c.kind.name.lower(),
                        "field": c.field,
                        "before": c.before,
                        "after": c.after,
                        "message": c.message,
                        "risk": c.risk.name.lower() if c.risk else None,
                        "loadFactor": c.load_factor,
                    }
                    for c in p.changes
                ],
            }
            for p in report.practices
        ],
    }


def render_json(report: DiffReport) -> str:
    """`report_to_json` as indented JSON text."""
    return json.dumps(report_to_json(report), indent=2) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
