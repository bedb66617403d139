"""A rendered multi-document stream (kustomize's output) as one side of a diff.

Speed matters here: a fleet of 10,000 practices is 10,000 documents on each side. The stream is
cut at its `---` lines and each document is read by libyaml without positions and checked by
the compiled schema validator (`reconciler.api.validate.is_valid_body`); only a document that
fails (or is of another kind, or not readable alone) goes through the full validator
(`validate_text`), whose messages then carry the stream's line and the document's landmarks
(`reconciler.api.stream.StreamDocument`: index, kind, namespace/name, origin file).
Documents of other kinds are skipped, as `pmsctl diff` does for files.

Two caches (`StreamCache`, shared by both sides of a diff) keep the cost near what differs: a
document whose text is on both sides is read once, and a document is read in pieces - each
top-level key, and each key under `spec`, is parsed on its own and cached by its text - so the
`writeback:` block that a base gives 3,000 practices is parsed once. Anything the piecewise
reading does not expect (a top-level list, a duplicate key, an alias between pieces) falls back
to reading the whole document.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler import API_VERSION, KIND
from reconciler.api.spec import PracticeSpec
from reconciler.api.stream import StreamDocument
from reconciler.api.validate import (
    STDIN_NAME,
    STREAM_LIMITS,
    is_valid_body,
    load_schema,
    validate_text,
)
from reconciler.review.diff import Resource

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$", re.MULTILINE)


class StreamInvalid(Exception):
    """The stream has problems; `lines` are the validator's lines, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(f"{len(lines)} problem(s)")
        self.lines = lines


@dataclass(frozen=True)
class RenderedSide:
    """The PracticeWritebacks of a stream by `namespace/name`, with each one's landmarks."""

    resources: dict[str, Resource]
    documents: dict[str, StreamDocument]


def split_documents(text: str) -> list[tuple[int, str]]:
    """(1-based first line, text) of each document between `---` lines."""
    out: list[tuple[int, str]] = []
    start, line = 0, 1
    for match in _SEPARATOR.finditer(text):
        out.append((line, text[start : match.start()]))
        line += text.count("\n", start, match.end()) + 1
        start = match.end() + 1
    out.append((line, text[start:]))
    return [(n, chunk) for n, chunk in out if chunk.strip()]


_TOP_KEY = re.compile(r"^[^\s#-]", re.MULTILINE)
_SPEC_KEY = re.compile(r"^  [^\s#-]", re.MULTILINE)


@dataclass
class StreamCache:
    """Parsed pieces by text, schema verdicts of spec pieces by text, and fast-path results by
    document text (see the module doc)."""

    pieces: dict[str, Any] = dataclasses.field(default_factory=dict)
    verdicts: dict[str, bool] = dataclasses.field(default_factory=dict)
    documents: dict[str, tuple[Mapping[str, Any], PracticeSpec] | None] = dataclasses.field(
        default_factory=dict
    )


def _cut(text: str, pattern: re.Pattern[str]) -> list[str]:
    starts = [m.start() for m in pattern.finditer(text)]
    if not starts or text[: starts[0]].strip(" \n"):
        raise ValueError("text before the first key")
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _pieces(texts: list[str], cache: StreamCache) -> list[Mapping[str, Any]]:
    """Each piece's one-key mapping. The pieces not cached yet are parsed in one load (the
    indented ones under a stand-in key) when none could hold an anchor or alias: a piece's
    value must not depend on another piece."""
    missing = [t for t in dict.fromkeys(texts) if t not in cache.pieces]
    outer = [t if t.endswith("\n") else t + "\n" for t in missing if not t.startswith(" ")]
    inner = [t if t.endswith("\n") else t + "\n" for t in missing if t.startswith(" ")]
    joined = "".join(outer) + (_INNER_KEY + ":\n" + "".join(inner) if inner else "")
    if len(missing) > 1 and "&" not in joined and "*" not in joined:
        values = yaml.load(joined, Loader=_Loader)
        if not isinstance(values, dict):
            raise ValueError("not a mapping")
        nested = values.pop(_INNER_KEY, {}) if inner else {}
        if not isinstance(nested, dict) or len(values) != len(outer) or len(nested) != len(inner):
            raise ValueError("not one key per piece")
        ordered = [t for t in missing if not t.startswith(" ")] + [
            t for t in missing if t.startswith(" ")
        ]
        items = [*values.items(), *nested.items()]
        for text, (key, value) in zip(ordered, items, strict=True):
            cache.pieces[text] = {key: value}
    else:
        for text in missing:
            value = yaml.load(text, Loader=_Loader)
            if not isinstance(value, dict) or len(value) != 1:
                raise ValueError("not one key")
            cache.pieces[text] = value
    return [cache.pieces[t] for t in texts]


#: The key under which `_read` gives the text of everything but `spec` (no YAML key has a NUL).
_REST = "\0rest"
#: The stand-in key the indented pieces are parsed under; a document using it is read whole.
_INNER_KEY = "__pmsctl_pieces__"


def _merge(pieces: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for piece in pieces:
        for key, value in piece.items():
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
    return out


def _read(chunk: str, cache: StreamCache) -> tuple[Any, dict[str, str] | None]:
    """(value, the text of each key under `spec` - and under `_REST` the rest of the
    document - when read piecewise, else None)."""
    try:
        top: list[str] = []
        spec_texts: list[str] = []
        for segment in _cut(chunk, _TOP_KEY):
            head, _, rest = segment.partition("\n")
            if head.rstrip() == "spec:" and rest.strip() and not spec_texts:
                spec_texts = _cut(rest, _SPEC_KEY)
            else:
                top.append(segment)
        pieces = _pieces([*top, *spec_texts], cache)
        body = _merge(pieces[: len(top)])
        if not spec_texts:
            return body, None
        if "spec" in body:
            raise ValueError("duplicate key 'spec'")
        spec_pieces = pieces[len(top) :]
        body["spec"] = _merge(spec_pieces)
        texts = {next(iter(p)): t for p, t in zip(spec_pieces, spec_texts, strict=True)}
        texts[_REST] = "".join(top)
        return body, texts
    except (ValueError, yaml.YAMLError):
        return yaml.load(chunk, Loader=_Loader), None


def read_document(chunk: str, cache: StreamCache) -> Any:
    """The value of one document, read piecewise when it is a plain block mapping; raises
    yaml.YAMLError when it is not YAML."""
    return _read(chunk, cache)[0]


#: A valid spec that stands in for the parts of a spec not being checked (see `_valid`).
_STUB_SPEC: dict[str, Any] = {
    "practiceId": "stub",
    "pms": {
        "type": "OpenDental",
        "url": "https://stub.invalid/api/v1",
        "credentialsSecretRef": {"name": "stub"},
    },
    "providerId": "1",
}
#: Keys of the spec the schema checks together (the providerId format depends on pms.type).
_JOINT = ("pms", "providerId")
_COMBINATORS = frozenset({"allOf", "anyOf", "oneOf", "if", "then", "else", "not"}) | frozenset(
    {"dependentRequired", "dependentSchemas", "dependencies", "$ref"}
)


def _joint_rules_only(node: Mapping[str, Any]) -> bool:
    """True when every rule under `node`'s allOf is `if pms ... then providerId ...`."""
    for rule in node.get("allOf", []):
        if not isinstance(rule, Mapping):
            return False
        if "allOf" in rule:
            if set(rule) - {"allOf", "$comment"} or not _joint_rules_only(rule):
                return False
            continue
        if set(rule) - {"if", "then", "x-rule", "$comment"}:
            return False
        cond, then = rule.get("if", {}), rule.get("then", {})
        if set(cond.get("properties", {})) - {"pms"} or set(cond.get("required", [])) - {"pms"}:
            return False
        if set(then) - {"properties"} or set(then.get("properties", {})) - {"providerId"}:
            return False
    return True


@functools.cache
def _decomposable() -> bool:
    """Whether a body's schema verdict is the conjunction of per-key verdicts (see `_valid`):
    no rule at the top level spans keys, and under `spec` only the pms/providerId rules do."""
    schema = load_schema()
    spec = schema.get("$defs", {}).get("spec", {})
    if _COMBINATORS & set(schema) or (_COMBINATORS - {"allOf"}) & set(spec):
        return False
    if not _joint_rules_only(spec):
        return False
    stub = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "stub"}}
    return is_valid_body({**stub, "spec": _STUB_SPEC})


def _valid(
    body: Mapping[str, Any], spec_texts: Mapping[str, str] | None, cache: StreamCache
) -> bool:
    """The schema's verdict on `body`, from verdicts on its parts when the schema allows it:
    everything but `spec` (with a stand-in spec), `pms` with `providerId`, and every other key
    of `spec` on its own, cached by its text (the `writeback:` block a base gives 3,000
    practices is checked once)."""
    spec = body.get("spec")
    if (
        spec_texts is None
        or not isinstance(spec, Mapping)
        or any(k not in spec for k in _STUB_SPEC)
        or not _decomposable()
    ):
        return is_valid_body(body)
    rest = {k: v for k, v in body.items() if k != "spec"}
    joint_text = "\0".join([spec_texts[_REST], *(spec_texts[k] for k in _JOINT)])
    verdict = cache.verdicts.get(joint_text)
    if verdict is None:
        verdict = is_valid_body({**rest, "spec": _STUB_SPEC}) and is_valid_body(
            {**rest, "spec": {**_STUB_SPEC, **{k: spec[k] for k in _JOINT}}}
        )
        cache.verdicts[joint_text] = verdict
    if not verdict:
        return False
    for key, text in spec_texts.items():
        if key in _JOINT or key == _REST:
            continue
        verdict = cache.verdicts.get(text)
        if verdict is None:
            verdict = is_valid_body({**rest, "spec": {**_STUB_SPEC, key: spec[key]}})
            cache.verdicts[text] = verdict
        if not verdict:
            return False
    return True


def _fast(chunk: str, cache: StreamCache) -> tuple[Mapping[str, Any], PracticeSpec] | None:
    """(body, spec) of a valid PracticeWriteback, None for anything the full validator must see."""
    if chunk in cache.documents:
        return cache.documents[chunk]
    try:
        body, spec_texts = _read(chunk, cache)
    except yaml.YAMLError:
        body, spec_texts = None, None
    found = None
    if (
        isinstance(body, Mapping)
        and body.get("kind") == KIND
        and body.get("apiVersion") == API_VERSION
        and _valid(body, spec_texts, cache)
    ):
        found = (body, PracticeSpec.from_resource(body))
    cache.documents[chunk] = found
    return found


def load_stream(
    text: str,
    *,
    name: str = STDIN_NAME,
    namespace: str = "default",
    source_path: Callable[[str], str] = lambda p: p,
    cache: StreamCache | None = None,
) -> RenderedSide:
    """Every valid PracticeWriteback of `text` by identity; StreamInvalid listing every problem
    (with the stream's line and the document) otherwise, including a namespace/name or a
    practiceId defined twice. `source_path` maps an origin annotation's path to the path to
    show (repository-relative for a render)."""
    resources: dict[str, Resource] = {}
    documents: dict[str, StreamDocument] = {}
    practice_ids: dict[str, str] = {}
    problems: list[str] = []
    cache = StreamCache() if cache is None else cache
    source_path = functools.cache(source_path)
    for index, (line, chunk) in enumerate(split_documents(text)):
        found = _fast(chunk, cache)
        if found is None:
            problems += _slow(chunk, name, index, line, source_path)
            continue
        body, spec = found
        doc = StreamDocument.of(index, line, body)
        origin = source_path(doc.origin) if doc.origin else None
        doc = dataclasses.replace(
            doc, origin=origin, configured_in=tuple(source_path(p) for p in doc.configured_in)
        )
        resource = Resource(doc.namespace or namespace, str(doc.name), spec, file=origin, line=line)
        where = f"{name}:{line}"
        if resource.key in resources:
            other = resources[resource.key]
            problems.append(
                f"{where}: metadata.name: {resource.key} is also defined at {name}:{other.line}"
                f" [{doc.describe()}]"
            )
            continue
        if spec.practice_id in practice_ids:
            problems.append(
                f"{where}: spec.practiceId: practiceId {spec.practice_id!r} is also used by "
                f"{practice_ids[spec.practice_id]} [{doc.describe()}]"
            )
            continue
        resources[resource.key] = resource
        documents[resource.key] = doc
        practice_ids[spec.practice_id] = resource.key
    if problems:
        raise StreamInvalid(problems)
    return RenderedSide(resources, documents)


def _slow(
    chunk: str, name: str, index: int, line: int, source_path: Callable[[str], str]
) -> list[str]:
    """The full validator's findings for one document, placed in the stream."""
    _, found = validate_text(chunk, name, skip_other_kinds=True, limits=STREAM_LIMITS)
    if not found:
        return []
    try:
        body = yaml.load(chunk, Loader=_Loader)
    except yaml.YAMLError:
        body = None
    doc = StreamDocument.of(index, line, body)
    if doc.origin:
        doc = dataclasses.replace(doc, origin=source_path(doc.origin))
    doc = dataclasses.replace(doc, configured_in=tuple(source_path(p) for p in doc.configured_in))
    out = []
    for p in found:
        moved = dataclasses.replace(p, line=p.line + line - 1, document=doc.describe())
        out.append(str(moved))
    return out
