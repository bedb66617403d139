"""Bounded, position-aware YAML loading for untrusted practice files.

Real libyaml (pyyaml's `CSafeLoader` when present, the pure-Python `SafeLoader` otherwise)
composes the node graph; this module walks the nodes itself instead of calling a constructor, so
that it can, in one pass:

- remember the line and column of every value (`SourceDocument.positions`, keyed by field path;
  a mapping entry is placed at its key, a sequence item at the item, the root at the document);
- keep the source text of every scalar YAML did not read as a string
  (`SourceDocument.sources`), so a message can show `0042` where the value became 34;
- report duplicate keys (pyyaml silently keeps the last one), non-string keys and unsupported
  tags as `YamlIssue`s instead of losing them;
- name the likely fix of a syntax error: a tab in the indentation, a key out of line with its
  siblings, a value holding `: ` that needs quotes, a missing space after a colon;
- bound the work: a file size cap (`Limits.max_bytes`), a cap on the number of values after alias
  expansion (`Limits.max_nodes`, which stops a "billion laughs" file after a few thousand steps),
  a nesting depth cap and recursive-alias detection.

Only the safe YAML tags are constructed (str, int, float, bool, null; timestamps stay strings, as
Kubernetes' YAML-to-JSON conversion keeps them). Nothing here knows about PracticeWriteback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.api.hints import missing_space_after_colon, quoted

#: The fastest safe loader available: libyaml's when pyyaml was built with it.
Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathKey = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_BOOLS = {"true": True, "false": False}


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input: bytes per file, values per document (after alias expansion),
    nesting depth."""

    max_bytes: int = 1 << 20
    max_nodes: int = 20_000
    max_depth: int = 64


DEFAULT_LIMITS = Limits()


class YamlSourceError(Exception):
    """The file cannot be read as YAML at all (syntax, size, encoding, alias bomb); 1-based
    line and col (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


@dataclass(frozen=True)
class YamlIssue:
    """A problem inside an otherwise readable document (duplicate key, non-string key, tag)."""

    line: int
    col: int
    path: PathKey
    message: str


@dataclass(frozen=True)
class SourceDocument:
    """One YAML document: its plain value and where each value came from."""

    index: int
    line: int
    col: int
    value: Any
    positions: Mapping[PathKey, tuple[int, int]]
    issues: tuple[YamlIssue, ...] = ()
    #: The source text of each scalar read as a number, boolean or null (`0042`, `Off`, `~`).
    sources: Mapping[PathKey, str] = field(default_factory=dict)

    def position(self, path: PathKey) -> tuple[int, int]:
        """The (line, col) of `path`, or of its nearest ancestor that exists in the file."""
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (self.line, self.col))


@dataclass
class _Walk:
    limits: Limits
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    issues: list[YamlIssue] = field(default_factory=list)
    sources: dict[PathKey, str] = field(default_factory=dict)
    count: int = 0
    active: set[int] = field(default_factory=set)


_constructor = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.ScalarNode, walk: _Walk, path: PathKey) -> Any:
    tag = node.tag
    value = node.value
    if tag == _STR:
        return value
    if tag != _TIMESTAMP:
        walk.sources[path] = value
    if tag == _BOOL:
        known = _BOOLS.get(value)
        return known if known is not None else _constructor.construct_yaml_bool(node)
    if tag == _INT:
        return _constructor.construct_yaml_int(node)
    if tag == _FLOAT:
        return _constructor.construct_yaml_float(node)
    if tag == _NULL:
        return None
    if tag == _TIMESTAMP:
        return value
    mark = node.start_mark
    walk.issues.append(
        YamlIssue(
            mark.line + 1,
            mark.column + 1,
            path,
            f"unsupported YAML tag {tag!r}; use plain strings, numbers and booleans",
        )
    )
    return value


def _enter(node: yaml.Node, walk: _Walk, depth: int) -> None:
    walk.count += 1
    if walk.count > walk.limits.max_nodes:
        mark = node.start_mark
        raise YamlSourceError(
            f"document expands to more than {walk.limits.max_nodes} values (anchors and aliases "
            "such as '*a' multiply); a practice file needs far fewer",
            mark.line + 1,
            mark.column + 1,
        )
    if depth > walk.limits.max_depth:
        mark = node.start_mark
        raise YamlSourceError(
            f"nesting is deeper than {walk.limits.max_depth} levels", mark.line + 1, mark.column + 1
        )


def _value(node: yaml.Node, walk: _Walk, path: PathKey, depth: int) -> Any:
    _enter(node, walk, depth)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, walk, path)
    key = id(node)
    if key in walk.active:
        mark = node.start_mark
        raise YamlSourceError(
            "an alias refers to the node that contains it (recursive alias)",
            mark.line + 1,
            mark.column + 1,
        )
    walk.active.add(key)
    try:
        if isinstance(node, yaml.MappingNode):
            return _mapping(node, walk, path, depth)
        items = []
        for i, item in enumerate(node.value):
            mark = item.start_mark
            walk.positions[(*path, i)] = (mark.line + 1, mark.column + 1)
            items.append(_value(item, walk, (*path, i), depth + 1))
        if node.tag != _SEQ:
            mark = node.start_mark
            walk.issues.append(
                YamlIssue(
                    mark.line + 1, mark.column + 1, path, f"unsupported YAML tag {node.tag!r}"
                )
            )
        return items
    finally:
        walk.active.discard(key)


def _merge_sources(node: yaml.Node) -> list[yaml.MappingNode]:
    if isinstance(node, yaml.MappingNode):
        return [node]
    if isinstance(node, yaml.SequenceNode):
        return [n for n in node.value if isinstance(n, yaml.MappingNode)]
    return []


def _mapping(node: yaml.MappingNode, walk: _Walk, path: PathKey, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, tuple[int, int]] = {}
    merged: list[yaml.MappingNode] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merged.extend(_merge_sources(value_node))
            continue
        mark = key_node.start_mark
        where = (mark.line + 1, mark.column + 1)
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR:
            key = key_node.value
        else:
            raw = (
                _value(key_node, walk, path, depth + 1)
                if isinstance(key_node, yaml.ScalarNode)
                else "<complex key>"
            )
            key = str(raw)
            walk.issues.append(
                YamlIssue(*where, (*path, key), f"mapping keys must be strings, got {raw!r}")
            )
        if key in seen:
            first = seen[key]
            walk.issues.append(
                YamlIssue(
                    *where,
                    (*path, key),
                    f"duplicate key {key!r} (first at line {first[0]}); YAML keeps only one of them: delete one",
                )
            )
        seen[key] = where
        walk.positions[(*path, key)] = where
        out[key] = _value(value_node, walk, (*path, key), depth + 1)
    for source in merged:  # YAML merge keys: explicit keys win, earlier merges win over later
        for key_node, value_node in source.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value in out:
                continue
            mark = key_node.start_mark
            walk.positions[(*path, key_node.value)] = (mark.line + 1, mark.column + 1)
            out[key_node.value] = _value(value_node, walk, (*path, key_node.value), depth + 1)
    return out


def _error_position(exc: yaml.YAMLError) -> tuple[int, int]:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        return "YAML syntax error: " + ", ".join(parts) if parts else "YAML syntax error"
    return f"YAML error: {exc}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _previous_content_line(lines: list[str], line: int) -> int | None:
    """The 1-based number of the last line before `line` holding more than a comment."""
    for n in range(line - 1, 0, -1):
        stripped = lines[n - 1].strip()
        if stripped and not stripped.startswith("#"):
            return n
    return None


def _syntax_hint(problem: str, lines: list[str], line: int, col: int, context: int) -> str | None:
    """The likely fix of a libyaml syntax error at (line, col), read from the text around it."""
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    before = _previous_content_line(lines, line)
    above = lines[before - 1] if before else ""
    if "mapping values are not allowed" in problem:
        separator = here.find(": ")
        if 0 <= separator < col - 1:
            key = here[:separator].strip().removeprefix("- ").strip()
            return f'a value that contains ": " must be quoted: {quoted(key, here[separator + 2 :].strip())}'
        if before and (pair := missing_space_after_colon(above)):
            return f"put a space after the colon on line {before}: {pair[0]}: {pair[1]}"
        if before and _indent(here) > _indent(above) and not above.rstrip().endswith(":"):
            return (
                f"line {line} is indented deeper than line {before}, which already has a value: "
                f"line it up with line {before} (or quote a value that contains ': ')"
            )
        return f"check the indentation of line {line}, and quote a value that contains ': '"
    if "could not find expected ':'" in problem:
        start = lines[context - 1] if 0 < context <= len(lines) else ""
        if pair := missing_space_after_colon(start):
            return f"put a space after the colon on line {context}: {pair[0]}: {pair[1]}"
        return f"a key needs a colon and a space after it (line {context})"
    if "did not find expected key" in problem and before:
        n, m = _indent(here), _indent(above)
        if n != m:
            return (
                f"line {line} is indented {n} spaces and line {before} {m}: "
                "keys of one mapping start in the same column"
            )
        return f"check the indentation of line {line} against the keys above it"
    if "did not find expected ','" in problem:
        return "inside { } or [ ], quote a value that contains ': ' or ','"
    return None


def _syntax_error(exc: yaml.YAMLError, text: str) -> YamlSourceError:
    """A libyaml error with its position and, when the text shows it, the fix. A tab in the
    indentation near the error is named as the cause: libyaml's own words for it vary."""
    line, col = _error_position(exc)
    message = _describe(exc)
    if not isinstance(exc, yaml.MarkedYAMLError) or not line:
        return YamlSourceError(message, line, col)
    lines = text.splitlines()
    context = exc.context_mark.line + 1 if exc.context_mark is not None else line
    for n in range(max(1, min(context, line - 1)), min(line, len(lines)) + 1):
        indent = lines[n - 1][: len(lines[n - 1]) - len(lines[n - 1].lstrip(" \t"))]
        if "\t" in indent:
            return YamlSourceError(
                f"line {n} is indented with a tab; YAML does not allow tabs for indentation; "
                "indent with spaces",
                n,
                indent.index("\t") + 1,
            )
    hint = _syntax_hint(exc.problem or "", lines, line, col, context)
    return YamlSourceError(f"{message}; {hint}" if hint else message, line, col)


def load_documents(
    text: str, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[SourceDocument], YamlSourceError | None]:
    """Every document of `text` with positions; a fatal error stops at the document it hits
    (the documents before it are returned with it)."""
    docs: list[SourceDocument] = []
    if len(text) > limits.max_bytes:
        return docs, YamlSourceError(f"file is larger than {limits.max_bytes} bytes")
    loader = Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            walk = _Walk(limits)
            mark = node.start_mark
            start = (mark.line + 1, mark.column + 1)
            walk.positions[()] = start
            value = _value(node, walk, (), 0)
            docs.append(
                SourceDocument(
                    len(docs), *start, value, walk.positions, tuple(walk.issues), walk.sources
                )
            )
    except yaml.YAMLError as exc:
        return docs, _syntax_error(exc, text)
    except YamlSourceError as exc:
        return docs, exc
    finally:
        loader.dispose()
    return docs, None


def read_text(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> str:
    """A file's text, refusing files over the size cap and text that is not UTF-8."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise YamlSourceError(
                f"file is {size} bytes, more than the limit of {limits.max_bytes} bytes"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise YamlSourceError(f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlSourceError("the file is not UTF-8 text", line, 0) from exc
