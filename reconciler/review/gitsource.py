"""Read YAML files at a git ref without checking it out, and from the working tree.

Real git, through its CLI: `git ls-tree -r -z` lists the blobs under a path at a ref and one
`git cat-file --batch` process streams all their contents, so reading 10,000 files costs two
process starts. Each `SourceFile` carries its git blob id (computed the way `git hash-object`
does for working tree files), so callers can parse identical content once.

`default_base()` picks what `pmsctl diff` compares with when no `--base` is given: the merge
base of HEAD with the default branch (origin/HEAD, then main, master, origin/main,
origin/master).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")
#: Candidates for the default branch when origin/HEAD is not set, in order.
DEFAULT_BRANCHES = ("main", "master", "origin/main", "origin/master")


class GitSourceError(Exception):
    """git failed or the repository/ref/path is not usable; the message says which and why."""


@dataclass(frozen=True)
class SourceFile:
    """One file's text. `path` is relative to the repository root, with `/` separators."""

    path: str
    text: str
    blob: str


def _git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=input,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise GitSourceError("git is not installed or not on PATH") from exc
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitSourceError(f"git {' '.join(args[:2])} failed: {err[-1] if err else 'no output'}")
    return done.stdout


def repo_root(start: Path) -> Path:
    """The top folder of the work tree containing `start`."""
    folder = start if start.is_dir() else start.parent
    try:
        out = _git(folder, "rev-parse", "--show-toplevel")
    except GitSourceError as exc:
        raise GitSourceError(f"{start} is not inside a git repository ({exc})") from exc
    return Path(out.decode().strip())


def rev_parse(repo: Path, ref: str) -> str:
    """The commit id `ref` names; GitSourceError naming the ref when it does not resolve."""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except GitSourceError as exc:
        raise GitSourceError(
            f"unknown git ref {ref!r} (a branch, tag or commit; fetch it first in CI)"
        ) from exc


def default_base(repo: Path) -> tuple[str, str]:
    """(label, commit) of the merge base of HEAD with the default branch."""
    candidates: list[str] = []
    try:
        head_ref = _git(repo, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
        candidates.append(head_ref.decode().strip())
    except GitSourceError:
        pass
    candidates += DEFAULT_BRANCHES
    for branch in candidates:
        try:
            rev_parse(repo, branch)
        except GitSourceError:
            continue
        try:
            merge_base = _git(repo, "merge-base", "HEAD", branch).decode().strip()
        except GitSourceError as exc:
            raise GitSourceError(f"no merge base between HEAD and {branch}: {exc}") from exc
        return f"merge-base({branch})", merge_base
    raise GitSourceError(
        "cannot find the default branch (tried origin/HEAD, " + ", ".join(DEFAULT_BRANCHES) + "); "
        "pass --base REF"
    )


def _is_yaml(path: str) -> bool:
    return path.endswith(YAML_SUFFIXES)


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GitSourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_ref(repo: Path, commit: str, pathspecs: Sequence[str]) -> list[SourceFile]:
    """Every `*.yaml`/`*.yml` blob under `pathspecs` (repository-relative; empty means the
    whole tree) at `commit`, sorted by path."""
    listing = _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit, "--", *pathspecs)
    entries: list[tuple[str, str]] = []
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        _mode, kind, blob = meta.decode().split(" ")
        path = raw_path.decode("utf-8", "surrogateescape")
        if kind == "blob" and _is_yaml(path):
            entries.append((path, blob))
    if not entries:
        return []
    request = "".join(f"{blob}\n" for _, blob in entries).encode()
    stream = _git(repo, "cat-file", "--batch", input=request)
    out: list[SourceFile] = []
    pos = 0
    for path, blob in entries:
        end = stream.index(b"\n", pos)
        header = stream[pos:end].split(b" ")
        if len(header) != 3 or header[1] != b"blob":
            raise GitSourceError(f"git cat-file: unexpected answer for {path}: {header!r}")
        size = int(header[2])
        data = stream[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1  # content, then one newline
        out.append(SourceFile(path, _decode(path, data), blob))
    out.sort(key=lambda f: f.path)
    return out


def blob_id(data: bytes) -> str:
    """The id git gives `data` as a blob (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _walk(top: str) -> Iterator[str]:
    if os.path.isfile(top):
        yield top
        return
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_yaml(name):
                yield os.path.join(folder, name)


def read_worktree(repo: Path, paths: Sequence[Path]) -> list[SourceFile]:
    """Every `*.yaml`/`*.yml` file under `paths` on disk (tracked or not; hidden folders
    skipped), with repository-relative paths, sorted by path."""
    root = str(repo.resolve())
    seen: dict[str, SourceFile] = {}
    for top in paths:
        if not top.exists():
            raise GitSourceError(f"{top}: no such file or folder")
        for file in _walk(str(top.resolve())):
            rel = (
                file[len(root) + 1 :]
                if file.startswith(root + os.sep)
                else os.path.relpath(file, root)
            ).replace(os.sep, "/")
            if rel in seen:
                continue
            with open(file, "rb") as fh:
                data = fh.read()
            seen[rel] = SourceFile(rel, _decode(rel, data), blob_id(data))
    return sorted(seen.values(), key=lambda f: f.path)


def pathspecs(repo: Path, paths: Sequence[Path]) -> list[str]:
    """`paths` (relative to the current folder or absolute) as repository-relative pathspecs."""
    specs: list[str] = []
    root = repo.resolve()
    for p in paths:
        resolved = p.resolve()
        try:
            rel = resolved.relative_to(root).as_posix()
        except ValueError as exc:
            raise GitSourceError(f"{p} is outside the repository {repo}") from exc
        specs.append("." if rel in ("", ".") else rel)
    return specs
