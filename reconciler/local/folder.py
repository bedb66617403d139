"""Reading and watching the folder `pmsctl up` runs from: which files are practice files, and
`FolderWatcher`, which polls them (stat, then a content hash only for files whose stat changed)
and validates changed files with the same checks as `pmsctl validate`. A file it cannot read (its
mode changed, say) and a symlink that leads nowhere are problems of that file: its practices,
if any ran, keep running at their last good version, as for an invalid file.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.api.yamlsource import DEFAULT_LIMITS
from reconciler.local.plan import FileResult, LoadedPractice, practice_key

YAML_SUFFIXES = (".yaml", ".yml")


def load_text(text: str, path: str, skip_other_kinds: bool = False) -> FileResult:
    """Validate one file's text with `reconciler.api.validate` (the checks `pmsctl validate` runs,
    with its `--skip-other-kinds`) and turn its documents into practices; any problem makes the
    whole file not applied."""
    from reconciler.api import validate

    documents, problems = validate.validate_text(text, path, skip_other_kinds=skip_other_kinds)
    if problems:
        return FileResult(path=path, problems=tuple(str(p) for p in problems))
    practices = []
    for doc in documents:
        key, name = practice_key({"name": doc.name, "namespace": doc.namespace})
        practices.append(LoadedPractice(key, name, path, doc.spec()))
    return FileResult(path=path, practices=tuple(practices))


def yaml_files(root: Path) -> list[Path]:
    """The YAML files `pmsctl up` reads: the file itself, or every *.yaml/*.yml under a folder
    (hidden files and folders skipped, as editors keep swap files there)."""
    if root.is_file():
        return [root]
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix in YAML_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


def broken_links(root: Path) -> list[Path]:
    """Symlinks under `root` (hidden ones skipped, as in `yaml_files`) that lead nowhere and may
    have stood for practices (`reconciler.api.validate.broken_links`)."""
    from reconciler.api import validate

    if not root.is_dir():
        return []
    return [Path(p.file) for p in validate.broken_links(root, skip_hidden=True)]


#: What a scan compares to decide whether to re-read a file: mtime, size and inode for its
#: content, ctime and mode for its access (a chmod changes only those).
Stamp = tuple[int, int, int, int, int]


@dataclass
class _Cached:
    stat: Stamp
    digest: str
    result: FileResult


class FolderWatcher:
    """Polls a folder for YAML files and validates the ones that changed.

    `scan()` returns the full snapshot (path -> FileResult) and whether anything differs from the
    previous scan. A file is re-read only when its (mtime, size, inode) changed, and re-validated
    only when its content hash changed, so a scan of an unchanged folder costs one stat per file.
    A file that cannot be read, or a symlink that leads nowhere, is reported on every scan.
    """

    def __init__(
        self,
        root: Path,
        load: Callable[[str, str], FileResult] | None = None,
        *,
        skip_other_kinds: bool = False,
    ) -> None:
        self.root = root
        self._load = load or (lambda text, path: load_text(text, path, skip_other_kinds))
        self._cache: dict[str, _Cached] = {}

    def _display_path(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    def scan(self) -> tuple[dict[str, FileResult], bool]:
        """Read the folder now; returns (snapshot, changed since the last scan)."""
        changed = False
        seen: dict[str, _Cached] = {}
        for path in yaml_files(self.root):
            shown = self._display_path(path)
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns, st.st_mode)
                cached = self._cache.get(shown)
                if cached is not None and cached.stat == stamp:
                    seen[shown] = cached
                    continue
                if st.st_size > DEFAULT_LIMITS.max_bytes:
                    limit = DEFAULT_LIMITS.max_bytes
                    too_big = f"{shown}:1:1: <file>: file is {st.st_size} bytes, over the limit of {limit}"
                    seen[shown] = _Cached(stamp, "", FileResult(shown, problems=(too_big,)))
                    changed = changed or cached is None or cached.result != seen[shown].result
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed between listing and reading: the next scan sees it gone
            except OSError as exc:
                result = FileResult(shown, problems=(f"{shown}: cannot read: {exc.strerror}",))
                seen[shown] = _Cached((0, 0, 0, 0, 0), "", result)
                changed = changed or self._cache.get(shown) != seen[shown]
                continue
            digest = hashlib.sha256(data).hexdigest()
            if cached is not None and cached.digest == digest:
                seen[shown] = _Cached(stamp, digest, cached.result)
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                result = FileResult(shown, problems=(f"{shown}: not UTF-8 text ({exc.reason})",))
            else:
                result = self._load(text, shown)
            seen[shown] = _Cached(stamp, digest, result)
            changed = True
        from reconciler.api.validate import broken_link

        for link in broken_links(self.root):
            shown = self._display_path(link)
            why = broken_link(link)
            if why is None:  # fixed between listing and now: the next scan reads it
                continue
            result = FileResult(shown, problems=(f"{shown}: {why}; it is not read",))
            seen[shown] = _Cached((0, 0, 0, 0, 0), "", result)
            cached = self._cache.get(shown)
            changed = changed or cached is None or cached.result != result
        if set(seen) != set(self._cache):
            changed = True
        self._cache = seen
        return {p: c.result for p, c in seen.items()}, changed
