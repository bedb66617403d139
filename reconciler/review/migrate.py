"""Rewrite PracticeWriteback files from writeback.dental.dev/v1alpha1 to v1, keeping the file.

`migrate_text(text)` returns the new text and notes; comments, key order, quoting, flow or
block style and blank lines stay as written (ruamel.yaml's round trip), and only what the
version bump needs changes:

- `apiVersion: writeback.dental.dev/v1alpha1` -> `writeback.dental.dev/v1`;
- `spec.patientProfilePhotos` moves to `spec.sync.patients.profilePhotos` (its end-of-line
  comment goes with it). Without `sync.patients` it had no effect (photos come with the patient
  sync): it is dropped, with a note when it was true;
- `documents.<kind>.readFrom: Name` -> `readFrom: [Name]`;
- a `yaml-language-server` schema comment naming the v1alpha1 schema names the v1 one.

A file without a v1alpha1 PracticeWriteback is not touched, so a second run changes nothing; in
a file with one, the other documents (other kinds, v1 already) go through the same round trip
unchanged. Files are rewritten only when their text changes (`migrate_paths`). This is for files
in git; objects in a cluster are converted by the API server through the conversion webhook.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from reconciler import KIND
from reconciler.api.convert import V1, V1ALPHA1

_OLD_SCHEMA = "practicewriteback.v1alpha1.schema.json"
_NEW_SCHEMA = "practicewriteback.v1.schema.json"


class MigrateError(ValueError):
    """A file that cannot be read as YAML."""


@dataclass(frozen=True)
class Migrated:
    """The outcome for one file: its new text and what a reader should know."""

    path: str
    text: str
    changed: bool
    documents: int = 0
    notes: tuple[str, ...] = field(default=())


def _yaml() -> YAML:
    y = YAML()  # round trip
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a long line
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _shift_comment(mapping: CommentedMap, key: str, by: int) -> None:
    """Keep the gap before the end-of-line comment of `key` when its value's length changes."""
    item = mapping.ca.items.get(key)
    token = item[2] if item and len(item) > 2 else None
    if token is not None and getattr(token, "column", None) is not None:
        token.column = max(0, token.column + by)


def _migrate_document(doc: CommentedMap, notes: list[str], where: str, moved: list[str]) -> None:
    doc["apiVersion"] = V1
    _shift_comment(doc, "apiVersion", len(V1) - len(V1ALPHA1))
    spec = doc.get("spec")
    if not isinstance(spec, CommentedMap):
        return
    documents = spec.get("documents")
    if isinstance(documents, CommentedMap):
        for mapping in documents.values():
            if isinstance(mapping, CommentedMap) and isinstance(mapping.get("readFrom"), str):
                names = CommentedSeq([mapping["readFrom"]])
                names.fa.set_flow_style()
                mapping["readFrom"] = names
                _shift_comment(mapping, "readFrom", len("[]"))
    if "patientProfilePhotos" not in spec:
        return
    comment = spec.ca.items.pop("patientProfilePhotos", None)
    photos = spec.pop("patientProfilePhotos")
    sync = spec.get("sync")
    patients = sync.get("patients") if isinstance(sync, CommentedMap) else None
    if not isinstance(patients, CommentedMap):
        if photos:
            notes.append(
                f"{where}: dropped spec.patientProfilePhotos: true, which has no effect without "
                "sync.patients; set sync.patients.profilePhotos when you add the patient sync"
            )
        return
    patients["profilePhotos"] = photos
    if comment is None or comment[2] is None:
        return
    assert isinstance(sync, CommentedMap)
    moved.append(str(comment[2].value).strip())
    if patients.fa.flow_style():
        # a flow mapping ends on the `patients:` line: the comment goes after it, unless the
        # line has one already
        if sync.ca.items.get("patients", [None, None, None])[2] is None:
            sync.ca.items["patients"] = [None, None, comment[2], None]
    else:
        patients.ca.items["profilePhotos"] = [None, None, comment[2], None]


def _keep_lead(old: str, new: str) -> str:
    """`new` starting as `old` did: the emitter drops comments above a first explicit `---`
    (and that `---`), and may add a `---` the file did not start with."""
    lead: list[str] = []
    for line in old.splitlines(keepends=True):
        if line.rstrip() == "---":
            lead.append(line)
            break
        if line.strip() and not line.lstrip().startswith("#"):
            lead = []
            break
        lead.append(line)
    else:
        lead = []
    prefix = "".join(lead)
    if prefix and not new.startswith(prefix):
        return prefix + new.removeprefix("---\n")
    if not prefix and not old.startswith("---") and new.startswith("---\n"):
        return new.removeprefix("---\n")
    return new


def _tidy_line(line: str, moved: list[str]) -> str:
    """The schema comment names the v1 schema; a moved comment keeps two spaces before it (the
    emitter puts one after a line it grew)."""
    if line.lstrip().startswith("# yaml-language-server:"):
        return line.replace(_OLD_SCHEMA, _NEW_SCHEMA)
    for comment in moved:
        head = line.removesuffix(comment)
        if head != line and head.strip() and head.endswith(" "):
            return head.rstrip() + "  " + comment
    return line


def migrate_text(text: str, path: str = "<text>") -> Migrated:
    """The v1 text of a file's v1alpha1 PracticeWriteback documents (others unchanged)."""
    y = _yaml()
    try:
        docs = list(y.load_all(text))
    except Exception as exc:  # ruamel raises many YAMLError subclasses and ValueErrors
        raise MigrateError(f"{path}: not valid YAML: {exc}") from exc
    notes: list[str] = []
    moved: list[str] = []  # end-of-line comments that moved to another line
    count = 0
    for index, doc in enumerate(docs):
        if (
            isinstance(doc, CommentedMap)
            and doc.get("kind") == KIND
            and doc.get("apiVersion") == V1ALPHA1
        ):
            name = (doc.get("metadata") or {}).get("name", f"document {index + 1}")
            _migrate_document(doc, notes, f"{path}: {name}", moved)
            count += 1
    if not count:
        return Migrated(path, text, changed=False)
    out = io.StringIO()
    y.dump_all(docs, out)
    new = _keep_lead(text, out.getvalue())
    new = "\n".join(_tidy_line(line, moved) for line in new.split("\n"))
    return Migrated(path, new, changed=new != text, documents=count, notes=tuple(notes))


def _files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        elif path.exists():
            out.append(path)
        else:
            raise MigrateError(f"{path}: no such file or folder")
    return out


def migrate_paths(paths: Iterable[str | os.PathLike[str]], *, write: bool) -> list[Migrated]:
    """Migrate every YAML file under `paths`; with `write`, rewrite the files that change."""
    results: list[Migrated] = []
    for path in _files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MigrateError(f"{path}: {exc}") from exc
        result = migrate_text(text, str(path))
        if write and result.changed:
            path.write_text(result.text, encoding="utf-8")
        results.append(result)
    return results
