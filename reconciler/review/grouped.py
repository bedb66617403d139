"""A fleet-sized diff: the changes of `reconciler.review.diff` grouped by what changed.

One line in a kustomize base can change thousands of practices the same way; a reviewer wants
one line saying so: "outgoing SMS writeback disabled (was note type 'Text Message') in 3,012
practices (OpenDental 2,100, Dentrix 912); 4 kept as before by a local override". Pure:
`group_report()` takes a `DiffReport` and both sides' resources, and returns `Group`s keyed by
(change kind, field path, old value, new value); added, removed, renamed and moved practices are
grouped by kind alone. The renderers list the practices behind each group (in `-o json`, and in
a collapsible `<details>` block in `-o markdown`).

"Kept by a local override" is an approximation from what a render shows, and the rule is:
a practice that is not in the group, is on both sides, had the same value for the changed
setting at the base as the group's practices (the same on/off for an enabled/disabled change,
the same value otherwise), still has it at the head, comes from the same source file as some
practice of the group (kustomize's origin annotation, else its PMS type), and - when the render
says which kustomizations patched it (transformer annotations) - has one of those, other than
the fleet's own root, whose files mention the setting's key (`outgoingSms`, `appointments`,
`providerId`): `overrides(key, setting)` answers that last part.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.api.spec import DEFAULT_INTERVALS, PracticeSpec, SyncKind, WritebackType
from reconciler.review.diff import (
    MARKDOWN_LIMIT,
    Change,
    ChangeKind,
    DiffReport,
    DiffStatus,
    Resource,
    Risk,
    Value,
    summary_line,
)

#: Kinds grouped by kind alone: their before/after name the practice itself.
_BY_KIND = (ChangeKind.ADDED, ChangeKind.REMOVED, ChangeKind.RENAMED, ChangeKind.MOVED)


@dataclass(frozen=True)
class PmsLoad:
    """For a poll interval group: the PMS reads per minute of its practices of one PMS type."""

    pms: str
    practices: int
    before_per_minute: float
    after_per_minute: float

    @property
    def factor(self) -> float:
        return self.after_per_minute / self.before_per_minute if self.before_per_minute else 0.0


@dataclass(frozen=True)
class Group:
    """The practices that changed one setting from one value to the same other value."""

    kind: ChangeKind
    field: str
    before: Value
    after: Value
    message: str
    risk: Risk | None
    practices: tuple[str, ...]
    by_pms: Mapping[str, int]
    kept: tuple[str, ...] = ()
    load: tuple[PmsLoad, ...] = ()

    def headline(self) -> str:
        """`<what> in 3,012 practices (OpenDental 2,100, Dentrix 912); 4 kept ...`."""
        n = len(self.practices)
        pms = ", ".join(f"{p} {c:,}" for p, c in self.by_pms.items())
        word = "practice" if n == 1 else "practices"
        if self.kind in _BY_KIND:
            text = f"{self.kind.value}: {n:,} {word} ({pms})"
        else:
            text = f"{self.message} in {n:,} {word} ({pms})"
        if self.kept:
            text += f"; {len(self.kept):,} kept as before by a local override"
        if self.load:
            text += "; PMS reads per minute: " + ", ".join(
                f"{x.pms} {x.before_per_minute:,.0f} -> {x.after_per_minute:,.0f}"
                for x in self.load
            )
        return text


@dataclass(frozen=True)
class GroupedReport:
    """The groups (largest first) and the per-practice report they come from."""

    report: DiffReport
    groups: tuple[Group, ...]


def _setting(spec: PracticeSpec, change: Change) -> Hashable:
    """The value of the setting `change` is about, at the grain of the change: on/off for an
    enabled/disabled change, the full value otherwise."""
    parts = change.field.split(".")
    section = parts[1] if len(parts) > 1 else ""
    if section == "writeback":
        wb = spec.writeback.get(WritebackType(parts[2]))
        allow = bool(wb and wb.allow)
        if change.kind is ChangeKind.WRITEBACK_NOTE_TYPE:
            return (allow, wb.note_type if wb else None)
        return allow
    if section == "sync":
        sync = spec.sync.get(SyncKind(parts[2]))
        enabled = bool(sync and sync.enabled)
        if change.kind is ChangeKind.SYNC_INTERVAL:
            return (enabled, sync.interval_seconds if sync else None)
        return enabled
    if section == "documents":
        return repr(spec.documents)
    simple: dict[str, Callable[[PracticeSpec], Hashable]] = {
        "spec.suspend": lambda s: s.suspend,
        "spec.practiceId": lambda s: s.practice_id,
        "spec.displayName": lambda s: s.display_name,
        "spec.pms.type": lambda s: s.pms.type.value,
        "spec.pms.url": lambda s: s.pms.url,
        "spec.pms.credentialsSecretRef.name": lambda s: s.pms.credentials_secret,
        "spec.pms.timeoutSeconds": lambda s: s.pms.timeout_seconds,
        "spec.providerId": lambda s: s.provider_id,
        "spec.patientProfilePhotos": lambda s: s.patient_profile_photos,
    }
    getter = simple.get(change.field)
    return getter(spec) if getter else None


def setting_key(field: str) -> str:
    """The key a kustomization would write to set `field`: `spec.writeback.outgoingSms` ->
    `outgoingSms`, `spec.sync.appointments.interval` -> `appointments`, `spec.providerId` ->
    `providerId`."""
    parts = field.split(".")
    return parts[2] if len(parts) > 2 else parts[-1]


def _pms_counts(keys: Sequence[str], sides: Sequence[Mapping[str, Resource]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for key in keys:
        r = next((s[key] for s in sides if key in s), None)
        counts[r.spec.pms.type.value if r else "unknown"] += 1
    return dict(counts.most_common())


def _load(
    keys: Sequence[str], base: Mapping[str, Resource], head: Mapping[str, Resource], kind: str
) -> tuple[PmsLoad, ...]:
    sync = SyncKind(kind)
    per: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for key in keys:
        b, h = base[key].spec.sync.get(sync), head[key].spec.sync.get(sync)
        row = per[head[key].spec.pms.type.value]
        row[0] += 1
        row[1] += 60.0 / (b.interval_seconds if b else float(DEFAULT_INTERVALS[sync]))
        row[2] += 60.0 / (h.interval_seconds if h else float(DEFAULT_INTERVALS[sync]))
    return tuple(PmsLoad(p, int(n), bm, am) for p, (n, bm, am) in sorted(per.items()))


def group_report(
    report: DiffReport,
    base: Mapping[str, Resource],
    head: Mapping[str, Resource],
    *,
    overrides: Callable[[str, str], bool] | None = None,
) -> GroupedReport:
    """Group `report`'s changes; `base`/`head` are the sides it was computed from (their
    `file` is the origin used for "kept by a local override"); `overrides(key, setting_key)`
    says whether a practice's own kustomizations set a key (None: do not check)."""
    members: dict[tuple[object, ...], list[tuple[str, Change]]] = defaultdict(list)
    for p in report.practices:
        for c in p.changes:
            gkey: tuple[object, ...] = (
                (c.kind,)
                if c.kind in _BY_KIND
                else (
                    c.kind,
                    c.field,
                    c.before,
                    c.after,
                )
            )
            members[gkey].append((p.key, c))
    changed_fields: dict[str, set[str]] = defaultdict(set)
    for p in report.practices:
        for c in p.changes:
            changed_fields[p.key].add(c.field)
    groups: list[Group] = []
    indexes: dict[tuple[ChangeKind, str], _Index] = {}
    for items in members.values():
        keys = [k for k, _ in items]
        first = items[0][1]
        kept: list[str] = []
        if first.kind not in _BY_KIND and first.field.startswith("spec."):
            index = indexes.get((first.kind, first.field))
            if index is None:
                index = _unchanged_index(first, base, head, changed_fields)
                indexes[(first.kind, first.field)] = index
            kept = _kept(keys, first, base, index, overrides)
        load: tuple[PmsLoad, ...] = ()
        if first.kind is ChangeKind.SYNC_INTERVAL:
            load = _load(keys, base, head, first.field.split(".")[2])
        groups.append(
            Group(
                first.kind,
                first.field,
                first.before if first.kind not in _BY_KIND else None,
                first.after if first.kind not in _BY_KIND else None,
                first.message if first.kind not in _BY_KIND else first.kind.value,
                first.risk,
                tuple(keys),
                _pms_counts(keys, (head, base)),
                tuple(kept),
                load,
            )
        )
    groups.sort(key=lambda g: (-len(g.practices), g.field, str(g.before), str(g.after)))
    return GroupedReport(report, tuple(groups))


#: (source, the setting's value) -> practices that kept that value on both sides, per setting.
_Index = dict[tuple[Hashable, Hashable], list[str]]


def _unchanged_index(
    change: Change,
    base: Mapping[str, Resource],
    head: Mapping[str, Resource],
    changed_fields: Mapping[str, set[str]],
) -> _Index:
    index: _Index = defaultdict(list)
    for key, h in head.items():
        b = base.get(key)
        if b is None or change.field in changed_fields.get(key, ()):
            continue
        value = _setting(b.spec, change)
        if _setting(h.spec, change) == value:
            index[(b.file or b.spec.pms.type.value, value)].append(key)
    return index


def _kept(
    keys: Sequence[str],
    change: Change,
    base: Mapping[str, Resource],
    index: _Index,
    overrides: Callable[[str, str], bool] | None,
) -> list[str]:
    present = [k for k in keys if k in base]
    if not present:
        return []
    old = _setting(base[present[0]].spec, change)
    sources = {base[k].file or base[k].spec.pms.type.value for k in present}
    wanted = setting_key(change.field)
    out = [k for source in sources for k in index.get((source, old), ())]
    if overrides is not None:
        out = [k for k in out if overrides(k, wanted)]
    return sorted(out)


# --- renderers ---------------------------------------------------------------------------------


def _flag(group: Group) -> str:
    return f"  [RISK: {group.risk.value}]" if group.risk else ""


def render_text(grouped: GroupedReport) -> str:
    """One line per group with its count; the practices are in `-o json`/`-o markdown`."""
    report = grouped.report
    lines = [f"# {report.base_label} -> {report.head_label}"]
    for g in grouped.groups:
        lines.append(f"{g.headline()}{_flag(g)}")
    lines += ["", summary_line(report)]
    return "\n".join(lines) + "\n"


def _names(keys: Sequence[str]) -> str:
    return ", ".join(f"<code>{html.escape(k)}</code>" for k in keys)


def render_markdown(grouped: GroupedReport, *, limit: int = MARKDOWN_LIMIT) -> str:
    """A pull request comment: one line per group, each with a collapsible list of practices
    (and of those kept by a local override); lists are cut to stay under `limit`."""
    report = grouped.report
    out = ["<!-- pmsctl-diff -->", "### pmsctl diff (grouped)", ""]
    out.append(f"`{report.base_label}` → `{report.head_label}`: {summary_line(report)}.")
    out.append("")
    size = sum(len(x) + 1 for x in out)
    budget = max(limit - size - 200 * len(grouped.groups), 0) // max(len(grouped.groups), 1)
    for g in grouped.groups:
        warn = f" — :warning: **{g.risk.value}**" if g.risk else ""
        block = [f"- {html.escape(g.headline(), quote=False)}{warn}", ""]
        for title, keys in (("practices", g.practices), ("kept by a local override", g.kept)):
            if not keys:
                continue
            shown: list[str] = []
            used = 0
            for k in keys:
                used += len(k) + 15
                if used > budget:
                    break
                shown.append(k)
            more = f" … and {len(keys) - len(shown):,} more" if len(shown) < len(keys) else ""
            block += [
                f"  <details><summary>{len(keys):,} {title}</summary>",
                "",
                f"  {_names(shown)}{more}",
                "",
                "  </details>",
                "",
            ]
        out += block
    return "\n".join(out) + "\n"


def grouped_to_json(grouped: GroupedReport) -> dict[str, object]:
    """The `-o json` shape: the groups with their practices, and the summary."""
    report = grouped.report
    return {
        "base": report.base_label,
        "head": report.head_label,
        "hasChanges": report.has_changes,
        "summary": {
            **{s.value: report.count(s) for s in DiffStatus},
            "unchanged": report.unchanged,
            "risky": len(report.risky),
        },
        "groups": [
            {
                "kind": g.kind.name.lower(),
                "field": g.field,
                "before": g.before,
                "after": g.after,
                "message": g.message,
                "headline": g.headline(),
                "risk": g.risk.name.lower() if g.risk else None,
                "count": len(g.practices),
                "byPms": dict(g.by_pms),
                "practices": list(g.practices),
                "keptByLocalOverride": list(g.kept),
                "readLoad": [
                    {
                        "pms": x.pms,
                        "practices": x.practices,
                        "readsPerMinuteBefore": round(x.before_per_minute, 3),
                        "readsPerMinuteAfter": round(x.after_per_minute, 3),
                        "factor": round(x.factor, 3),
                    }
                    for x in g.load
                ],
            }
            for g in grouped.groups
        ],
    }


def render_json(grouped: GroupedReport) -> str:
    """`grouped_to_json` as indented JSON text."""
    return json.dumps(grouped_to_json(grouped), indent=2) + "\n"


RENDERERS: dict[str, Callable[[GroupedReport], str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}
