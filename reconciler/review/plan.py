"""What a change to PracticeWriteback files would do at rollout, checked against the catalogs.

Pure: `plan_change(base, head, catalogs, now=...)` takes the two sides `reconciler.review.diff`
compares (mappings of `Resource` by `namespace/name`) and the practices' catalogs
(`reconciler.api.catalog.Catalog`: what each PMS offers, as the operator last read it) and
returns a `PlanReport`:

- for every practice the change adds, changes or renames, one `NameCheck` per provider,
  note-type and document-category name its spec uses: the PMS id it resolves to, or why not
  (not found, with the closest names by edit distance; hidden; provider inactive; a category
  that may not be used that way);
- a practice without a catalog (a new practice, or one whose PMS type changed) is "unverified",
  not an error; a catalog older than `max_age` is a warning;
- what the change does at run time: pollers started and stopped, PMS reads per minute before
  and after, writebacks turned on and off.

`exit_code` is 1 when a name would not resolve at rollout (the practice would go Ready=False),
else 0. Renderers: `render_text`, `render_markdown` (a pull request comment), `render_json`.
No git, no files, no cluster here: `reconciler.cli.plan` gathers the inputs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from reconciler.api.catalog import Catalog, DocumentUse
from reconciler.api.hints import edit_distance
from reconciler.api.spec import DocumentType, PracticeSpec, WritebackType, format_duration
from reconciler.review.diff import ChangeKind, DiffStatus, Resource, diff_practices

#: A catalog older than this is reported (seconds): the PMS may have changed since.
DEFAULT_MAX_AGE = 3600.0
#: How many closest names a "not found" line offers.
CLOSEST = 3

CatalogLookup = Callable[[str], Catalog | None]


class Verdict(StrEnum):
    """What became of one name."""

    RESOLVED = "resolves"
    NOT_FOUND = "not found"
    HIDDEN = "hidden"
    INACTIVE = "inactive"
    WRONG_USE = "not usable"
    UNVERIFIED = "unverified"

    @property
    def failing(self) -> bool:
        """True when the practice would go Ready=False at rollout because of it."""
        return self not in (Verdict.RESOLVED, Verdict.UNVERIFIED)


@dataclass(frozen=True)
class NameCheck:
    """One name a spec uses, checked against the catalog."""

    field: str  # spec.writeback.outgoingSms.noteType
    what: str  # provider | note type | document category
    name: str
    verdict: Verdict
    id: str | None = None
    closest: tuple[str, ...] = ()
    #: Every name that would have resolved (shown with --show-options).
    options: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class PracticePlan:
    key: str
    status: DiffStatus
    pms_type: str
    checks: tuple[NameCheck, ...]
    file: str | None = None
    line: int = 1
    #: Why nothing could be checked (no catalog, another PMS), or None.
    unverified: str | None = None
    catalog_age: float | None = None
    stale: bool = False

    @property
    def failing(self) -> tuple[NameCheck, ...]:
        return tuple(c for c in self.checks if c.verdict.failing)


@dataclass(frozen=True)
class RuntimeEffect:
    """What the change does to the running operator, over the practices it touches."""

    pollers_started: int = 0
    pollers_stopped: int = 0
    reads_per_minute_before: float = 0.0
    reads_per_minute_after: float = 0.0
    writebacks_on: int = 0
    writebacks_off: int = 0
    practices_added: int = 0
    practices_removed: int = 0


@dataclass(frozen=True)
class PlanReport:
    practices: tuple[PracticePlan, ...]
    effect: RuntimeEffect
    base_label: str = "base"
    head_label: str = "head"
    catalog_source: str = ""
    max_age: float = DEFAULT_MAX_AGE
    unchanged: int = 0

    @property
    def failing(self) -> tuple[PracticePlan, ...]:
        return tuple(p for p in self.practices if p.failing)

    @property
    def stale(self) -> tuple[PracticePlan, ...]:
        return tuple(p for p in self.practices if p.stale)

    @property
    def unverified(self) -> tuple[PracticePlan, ...]:
        return tuple(p for p in self.practices if p.unverified)

    @property
    def exit_code(self) -> int:
        return 1 if self.failing else 0


# --- resolution ------------------------------------------------------------------------------


def closest_names(name: str, options: Sequence[str], limit: int = CLOSEST) -> tuple[str, ...]:
    """Up to `limit` options nearest to `name` by edit distance (case ignored), nearest first,
    only those near enough to be a typo or a variant (at most half the name's length, at least
    3 edits) or that contain the name or are contained in it."""
    folded = name.casefold()
    scored: list[tuple[int, str]] = []
    for option in options:
        other = option.casefold()
        distance = edit_distance(folded, other)
        if distance <= max(3, len(name) // 2) or (folded and (folded in other or other in folded)):
            scored.append((distance, option))
    scored.sort()
    return tuple(option for _, option in scored[:limit])


def _check_provider(spec: PracticeSpec, catalog: Catalog) -> NameCheck:
    field_name = "spec.providerId"
    active = tuple(f"{p.id} ({p.name})" for p in catalog.providers if p.active)
    found = next((p for p in catalog.providers if p.id == spec.provider_id), None)
    if found is None:
        ids = [p.id for p in catalog.providers if p.active]
        near = closest_names(spec.provider_id, ids)
        by_id = {p.id: f"{p.id} ({p.name})" for p in catalog.providers}
        return NameCheck(
            field_name,
            "provider",
            spec.provider_id,
            Verdict.NOT_FOUND,
            closest=tuple(by_id[i] for i in near),
            options=active,
        )
    if not found.active:
        return NameCheck(
            field_name,
            "provider",
            spec.provider_id,
            Verdict.INACTIVE,
            id=found.id,
            options=active,
            detail=found.name,
        )
    return NameCheck(
        field_name, "provider", spec.provider_id, Verdict.RESOLVED, id=found.id, detail=found.name
    )


def _check_name(
    field_name: str,
    what: str,
    name: str,
    entries: Sequence[tuple[str, str, bool, bool]],
    use: str = "",
) -> NameCheck:
    """`entries`: (id, name, hidden, usable for this use)."""
    usable = tuple(sorted(n for _, n, hidden, ok in entries if ok and not hidden))
    match = next((e for e in entries if e[1] == name and not e[2]), None) or next(
        (e for e in entries if e[1] == name), None
    )
    if match is None:
        return NameCheck(
            field_name,
            what,
            name,
            Verdict.NOT_FOUND,
            closest=closest_names(name, usable),
            options=usable,
        )
    entry_id, _, hidden, ok = match
    if hidden:
        return NameCheck(field_name, what, name, Verdict.HIDDEN, id=entry_id, options=usable)
    if not ok:
        return NameCheck(
            field_name, what, name, Verdict.WRONG_USE, id=entry_id, options=usable, detail=use
        )
    return NameCheck(field_name, what, name, Verdict.RESOLVED, id=entry_id)


def resolve(spec: PracticeSpec, catalog: Catalog) -> tuple[NameCheck, ...]:
    """Every provider, note-type and document-category name `spec` uses, against `catalog`,
    by the rules the engine applies at reconcile (`reconciler.engine.core`)."""
    checks = [_check_provider(spec, catalog)]
    notes = [(t.id, t.name, t.hidden, True) for t in catalog.note_types]
    for kind, name in sorted(spec.allowed_note_types().items(), key=lambda kv: _order(kv[0])):
        checks.append(_check_name(f"spec.writeback.{kind}.noteType", "note type", name, notes))
    for doc_kind in DocumentType:
        mapping = spec.documents.get(doc_kind)
        if mapping is None:
            continue
        for key, category, use in (
            ("writeTo", mapping.write_to, DocumentUse.WRITE),
            ("readFrom", mapping.read_from, DocumentUse.READ),
        ):
            if not category:
                continue
            entries = [(c.id, c.name, c.hidden, use in c.uses) for c in catalog.document_categories]
            checks.append(
                _check_name(
                    f"spec.documents.{doc_kind}.{key}",
                    "document category",
                    category,
                    entries,
                    str(use),
                )
            )
    return tuple(checks)


def _order(kind: WritebackType) -> int:
    return list(WritebackType).index(kind)


def reads_per_minute(spec: PracticeSpec | None) -> float:
    """PMS reads a minute this spec's pollers make (none when suspended)."""
    if spec is None or spec.suspend:
        return 0.0
    return sum(60.0 / s for s in spec.enabled_sync().values())


def _pollers(spec: PracticeSpec | None) -> set[str]:
    if spec is None or spec.suspend:
        return set()
    return {str(k) for k in spec.enabled_sync()}


def _age(catalog: Catalog, now: datetime) -> float | None:
    read = catalog.read_at_time()
    return None if read is None else max(0.0, (now - read).total_seconds())


def plan_change(
    base: Mapping[str, Resource],
    head: Mapping[str, Resource],
    catalogs: CatalogLookup | Mapping[str, Catalog],
    *,
    now: datetime,
    max_age: float = DEFAULT_MAX_AGE,
    base_label: str = "base",
    head_label: str = "head",
    catalog_source: str = "",
    identical: int = 0,
) -> PlanReport:
    """Check every practice the change touches (see the module docstring)."""
    lookup: CatalogLookup = catalogs.get if isinstance(catalogs, Mapping) else catalogs
    report = diff_practices(base, head, identical=identical)
    plans: list[PracticePlan] = []
    started = stopped = 0
    before = after = 0.0
    added = removed = 0
    for p in report.practices:
        b = base.get(p.base_key or p.key) if p.status is not DiffStatus.ADDED else None
        h = head.get(p.key) if p.status is not DiffStatus.REMOVED else None
        b_spec = b.spec if b is not None else None
        h_spec = h.spec if h is not None else None
        started += len(_pollers(h_spec) - _pollers(b_spec))
        stopped += len(_pollers(b_spec) - _pollers(h_spec))
        before += reads_per_minute(b_spec)
        after += reads_per_minute(h_spec)
        added += p.status is DiffStatus.ADDED
        removed += p.status is DiffStatus.REMOVED
        if h is None or p.status is DiffStatus.MOVED:
            continue
        catalog = lookup(p.key)
        if catalog is None and p.base_key:  # renamed: the PMS is the same practice's
            catalog = lookup(p.base_key)
        pms = str(h.spec.pms.type)
        if catalog is None:
            why = (
                "new practice: no catalog yet (the operator publishes one after its first "
                "reconcile)"
                if p.status is DiffStatus.ADDED
                else "no catalog for this practice in the catalog source"
            )
            plans.append(PracticePlan(p.key, p.status, pms, (), h.file, h.line, unverified=why))
            continue
        if catalog.pms_type != pms:
            why = f"the catalog is for {catalog.pms_type}; the change moves the practice to {pms}"
            plans.append(PracticePlan(p.key, p.status, pms, (), h.file, h.line, unverified=why))
            continue
        age = _age(catalog, now)
        plans.append(
            PracticePlan(
                p.key,
                p.status,
                pms,
                resolve(h.spec, catalog),
                h.file,
                h.line,
                catalog_age=age,
                stale=age is None or age > max_age,
            )
        )
    effect = RuntimeEffect(
        pollers_started=started,
        pollers_stopped=stopped,
        reads_per_minute_before=round(before, 3),
        reads_per_minute_after=round(after, 3),
        writebacks_on=report.kind_counts.get(ChangeKind.WRITEBACK_ENABLED, 0),
        writebacks_off=report.kind_counts.get(ChangeKind.WRITEBACK_DISABLED, 0),
        practices_added=added,
        practices_removed=removed,
    )
    return PlanReport(
        practices=tuple(plans),
        effect=effect,
        base_label=base_label,
        head_label=head_label,
        catalog_source=catalog_source,
        max_age=max_age,
        unchanged=report.unchanged,
    )


# --- rendering -------------------------------------------------------------------------------


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown age"
    return format_duration(int(seconds))


def line_for(check: NameCheck, *, show_options: bool = False) -> str:
    """`spec.writeback.outgoingSms.noteType: note type 'Text Msg' not found; closest: ...`."""
    head = f"{check.field}: {check.what} '{check.name}'"
    v = check.verdict
    if v is Verdict.RESOLVED:
        detail = f" ({check.detail})" if check.detail else ""
        return f"{head} -> id {check.id}{detail}"
    if v is Verdict.NOT_FOUND:
        text = f"{head} not found"
        if check.closest:
            text += "; closest: " + ", ".join(f"'{c}'" for c in check.closest)
        elif not show_options:
            text += "; no close name (--show-options lists them all)"
    elif v is Verdict.HIDDEN:
        text = f"{head} is hidden in the PMS (id {check.id}); unhide it or pick another"
    elif v is Verdict.INACTIVE:
        text = f"{head} ({check.detail}) is inactive in the PMS; pick an active provider"
    elif v is Verdict.WRONG_USE:
        text = f"{head} (id {check.id}) may not be used for {check.detail}"
    else:
        text = f"{head}: unverified"
    if show_options:
        text += "; options: " + (", ".join(f"'{o}'" for o in check.options) or "(none)")
    return text


def effect_lines(e: RuntimeEffect) -> list[str]:
    """The run-time effect, one line each."""
    out = []
    if e.practices_added or e.practices_removed:
        out.append(f"practices: +{e.practices_added} -{e.practices_removed}")
    out.append(f"pollers: +{e.pollers_started} started, -{e.pollers_stopped} stopped")
    delta = e.reads_per_minute_after - e.reads_per_minute_before
    out.append(
        f"PMS reads: {e.reads_per_minute_before:g}/min -> {e.reads_per_minute_after:g}/min "
        f"({delta:+g}/min) over the practices changed"
    )
    out.append(f"writebacks: {e.writebacks_on} turned on, {e.writebacks_off} turned off")
    return out


def summary_line(report: PlanReport) -> str:
    n = len(report.practices)
    failing = len(report.failing)
    bad = sum(len(p.failing) for p in report.failing)
    parts = [f"{n} practice{'s' if n != 1 else ''} checked"]
    if failing:
        parts.append(f"{bad} name{'s' if bad != 1 else ''} would fail at rollout in {failing}")
    else:
        parts.append("every name resolves")
    if report.unverified:
        parts.append(f"{len(report.unverified)} unverified")
    if report.stale:
        limit = format_duration(int(report.max_age))
        parts.append(f"{len(report.stale)} with a catalog older than {limit}")
    return "; ".join(parts)


def render_text(report: PlanReport, *, show_options: bool = False) -> str:
    """One line per name; per practice, its catalog's age or why it is unverified."""
    out = [f"pmsctl plan: {report.base_label} -> {report.head_label}"]
    if report.catalog_source:
        out.append(f"catalogs: {report.catalog_source}")
    for p in report.practices:
        where = f" ({p.file}:{p.line})" if p.file else ""
        if p.unverified:
            out.append(f"{p.key}{where}: unverified: {p.unverified}")
            continue
        age = f"catalog read {_age_text(p.catalog_age)} ago"
        warn = f"; WARNING: older than {format_duration(int(report.max_age))}" if p.stale else ""
        out.append(f"{p.key}{where}: {p.pms_type}, {age}{warn}")
        for c in p.checks:
            mark = "ERROR" if c.verdict.failing else "ok   "
            out.append(f"  {mark} {line_for(c, show_options=show_options)}")
    out.append("run time:")
    out.extend(f"  {line}" for line in effect_lines(report.effect))
    out.append(summary_line(report))
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|")


#: Keep a PR comment under GitHub's limit; lines past it are counted, not shown.
MARKDOWN_LIMIT = 60_000


def render_markdown(report: PlanReport, *, show_options: bool = False) -> str:
    """A pull request comment: the verdict, the failing names first, then the rest."""
    icon = ":x:" if report.failing else ":white_check_mark:"
    out = [
        "<!-- pmsctl-plan -->",
        f"### {icon} pmsctl plan",
        "",
        f"`{_md(report.base_label)}` → `{_md(report.head_label)}`"
        + (f", catalogs from {_md(report.catalog_source)}" if report.catalog_source else ""),
        "",
        f"**{_md(summary_line(report))}**",
        "",
    ]
    rows: list[str] = []
    ordered = sorted(report.practices, key=lambda p: (not p.failing, p.key))
    for p in ordered:
        if p.unverified:
            rows.append(f"| {_md(p.key)} | | unverified | {_md(p.unverified)} |")
            continue
        for c in p.checks:
            if c.verdict.failing or show_options:
                rows.append(
                    f"| {_md(p.key)} | `{_md(c.field)}` | {c.verdict.value} | "
                    f"{_md(line_for(c, show_options=show_options))} |"
                )
        if p.stale:
            rows.append(f"| {_md(p.key)} | | stale catalog | read {_age_text(p.catalog_age)} ago |")
    if rows:
        out += ["| practice | field | verdict | detail |", "|---|---|---|---|"]
        used = sum(len(x) for x in out)
        for i, row in enumerate(rows):
            if used + len(row) > MARKDOWN_LIMIT:
                out.append(f"\n… {len(rows) - i} more rows (run `pmsctl plan` for all)")
                break
            out.append(row)
            used += len(row) + 1
        out.append("")
    out.append("**Run time**")
    out.append("")
    out.extend(f"- {_md(line)}" for line in effect_lines(report.effect))
    return "\n".join(out) + "\n"


def report_to_json(report: PlanReport) -> dict[str, object]:
    e = report.effect
    return {
        "base": report.base_label,
        "head": report.head_label,
        "catalogSource": report.catalog_source,
        "maxCatalogAgeSeconds": report.max_age,
        "exitCode": report.exit_code,
        "summary": summary_line(report),
        "practices": [
            {
                "key": p.key,
                "status": p.status.value,
                "pms": p.pms_type,
                "file": p.file,
                "line": p.line,
                "unverified": p.unverified,
                "catalogAgeSeconds": p.catalog_age,
                "staleCatalog": p.stale,
                "names": [
                    {
                        "field": c.field,
                        "what": c.what,
                        "name": c.name,
                        "verdict": c.verdict.value,
                        "failing": c.verdict.failing,
                        "id": c.id,
                        "closest": list(c.closest),
                        "options": list(c.options),
                    }
                    for c in p.checks
                ],
            }
            for p in report.practices
        ],
        "runtime": {
            "pollersStarted": e.pollers_started,
            "pollersStopped": e.pollers_stopped,
            "readsPerMinuteBefore": e.reads_per_minute_before,
            "readsPerMinuteAfter": e.reads_per_minute_after,
            "writebacksOn": e.writebacks_on,
            "writebacksOff": e.writebacks_off,
            "practicesAdded": e.practices_added,
            "practicesRemoved": e.practices_removed,
        },
    }


def render_json(report: PlanReport, *, show_options: bool = False) -> str:
    return json.dumps(report_to_json(report), indent=2) + "\n"


RENDERERS: dict[str, Callable[..., str]] = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
}
