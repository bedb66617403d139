"""The pure planner of `pmsctl up`: given what is running (key -> last applied practice and its
generation) and what the folder holds now (file -> valid practices or problems), decide what to
apply (with generation + 1 when the spec changed), what to remove, and which files are invalid.
An invalid file changes nothing: the last good version of its practices keeps running.

No I/O: the values come from `reconciler.local.folder`; tested with tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.api.spec import PracticeSpec, format_duration


@dataclass(frozen=True)
class LoadedPractice:
    """One valid PracticeWriteback document read from a file."""

    key: str  # namespace/name, the engine's key
    name: str  # metadata.name, what the table shows
    path: str  # the file it came from
    spec: PracticeSpec


@dataclass(frozen=True)
class FileResult:
    """A file's validation outcome: its practices when valid, else its problems (one line each)."""

    path: str
    practices: tuple[LoadedPractice, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Applied:
    """What is running for one key: the last good practice and the generation it was applied at."""

    practice: LoadedPractice
    generation: int


@dataclass(frozen=True)
class Plan:
    """The outcome of `plan()`: actions for the engine and the state to keep."""

    apply: tuple[Applied, ...] = ()
    remove: tuple[str, ...] = ()
    #: Problems by file path, for every file that is not (fully) applied.
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: key -> Applied after the actions succeed.
    applied: Mapping[str, Applied] = field(default_factory=dict)


def plan(applied: Mapping[str, Applied], files: Mapping[str, FileResult]) -> Plan:
    """Decide what to apply and remove so the engine runs what the folder says.

    - a practice that is new, or whose spec changed, is applied (generation + 1 on change);
    - a practice whose file is gone, or whose valid file no longer holds it, is removed;
    - an invalid file changes nothing: its practices keep running at their last good version;
    - the same key in two files: the file it runs from keeps it (a new file, even one that
      sorts first, never takes a running practice over); for a key not running yet the first
      file (by path) wins. The other file is reported as a duplicate.
    """
    problems: dict[str, list[str]] = {}
    desired: dict[str, LoadedPractice] = {}
    by_practice_id: dict[str, LoadedPractice] = {}
    for path in sorted(files):
        result = files[path]
        if not result.valid:
            problems[path] = list(result.problems)
            continue
        for practice in result.practices:
            kept = applied.get(practice.key)
            held_by = desired.get(practice.key)
            if held_by is None and kept is not None and kept.practice.path != path:
                # A running key keeps its file while that file is there and (still) holds it,
                # or is invalid (its last good version runs on).
                source = files.get(kept.practice.path)
                holds = source is not None and (
                    not source.valid or any(p.key == practice.key for p in source.practices)
                )
                held_by = kept.practice if holds else None
            if held_by is not None:
                where = held_by.path
                problems.setdefault(path, []).append(
                    f"{path}: {practice.key} is also defined in {where}; this copy is not applied"
                )
                continue
            same_id = by_practice_id.get(practice.spec.practice_id)
            if same_id is not None:
                problems.setdefault(path, []).append(
                    f"{path}: {practice.key}: spec.practiceId {practice.spec.practice_id!r} is "
                    f"also used by {same_id.key} in {same_id.path}; not applied"
                )
                continue
            desired[practice.key] = practice
            by_practice_id[practice.spec.practice_id] = practice
    # Keys whose source file is currently invalid stay as they are.
    frozen = {
        key: a
        for key, a in applied.items()
        if a.practice.path in files and not files[a.practice.path].valid and key not in desired
    }
    to_apply: list[Applied] = []
    next_applied: dict[str, Applied] = dict(frozen)
    for key, practice in desired.items():
        current = applied.get(key)
        if current is None:
            entry = Applied(practice, 1)
            to_apply.append(entry)
        elif current.practice.spec != practice.spec:
            entry = Applied(practice, current.generation + 1)
            to_apply.append(entry)
        else:  # same spec, perhaps from a moved or renamed file: nothing to do
            entry = Applied(practice, current.generation)
        next_applied[key] = entry
    to_remove = tuple(sorted(k for k in applied if k not in next_applied))
    return Plan(
        apply=tuple(sorted(to_apply, key=lambda a: a.practice.key)),
        remove=to_remove,
        problems={p: tuple(v) for p, v in problems.items()},
        applied=next_applied,
    )


def practice_key(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(engine key, name) from a resource's metadata: `namespace/name` (namespace `default`
    when absent, as kubectl would apply it) and `metadata.name`."""
    name = str(metadata.get("name") or "")
    namespace = str(metadata.get("namespace") or "default")
    return f"{namespace}/{name}", name


def display_names(applied: Mapping[str, Applied]) -> dict[str, str]:
    """key -> what the PRACTICE column shows: the name, like `kubectl get`, or `namespace/name`
    for a name that two namespaces use."""
    counts: dict[str, int] = {}
    for entry in applied.values():
        counts[entry.practice.name] = counts.get(entry.practice.name, 0) + 1
    return {
        key: entry.practice.name if counts[entry.practice.name] == 1 else key
        for key, entry in applied.items()
    }


def config_changes(before: PracticeSpec, after: PracticeSpec) -> list[dict[str, Any]]:
    """The fields that changed from `before` to `after`, as `pmsctl diff` words them (the review
    package's semantic diff): [{field, before, after, message}], for the log."""
    from reconciler.review.diff import compare_specs

    return [
        {"field": c.field, "before": c.before, "after": c.after, "message": c.message}
        for c in compare_specs(before, after)
    ]


def poller_changes(before: PracticeSpec | None, after: PracticeSpec) -> list[dict[str, Any]]:
    """Each poller whose schedule an apply changes: [{poller, action, before, after}] with action
    `started`, `stopped` or `rescheduled` and the intervals (None: not running)."""
    old = before.enabled_sync() if before is not None else {}
    new = after.enabled_sync()
    out: list[dict[str, Any]] = []
    for kind in sorted(set(old) | set(new)):
        b, a = old.get(kind), new.get(kind)
        if b == a:
            continue
        action = "started" if b is None else "stopped" if a is None else "rescheduled"
        out.append(
            {
                "poller": str(kind),
                "action": action,
                "before": format_duration(b) if b is not None else None,
                "after": format_duration(a) if a is not None else None,
            }
        )
    return out
