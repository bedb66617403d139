"""Validate PracticeWriteback files: the one JSON Schema plus what a schema cannot say.

Real: the packaged JSON Schema (`load_schema()`, a byte copy of `schemas/`), the `jsonschema`
library (draft 2020-12) for the explanation of every finding, and `reconciler.api.yamlsource` for
bounded loading with positions. Around the schema this module adds the rules that span
documents or need the file: YAML syntax errors, duplicate keys, empty files, another kind or
apiVersion, the same `practiceId` or namespace/name in two documents, and a Secret committed with
its values in plain text.

Messages name the fix (`reconciler.api.hints` computes it): the closest valid key or enum value,
quotes for a number or boolean YAML read where a string belongs (with the leading zeros it lost),
a unit for a duration, https for a remote URL, a valid name close to an invalid one.

Speed: a document is first checked by `fastjsonschema`'s validator compiled from the same schema
(`_fast_check`); only a document it rejects is run through `jsonschema` to produce the messages.
Tests prove that the two agree on every case in `tests/cases/` and on random mutations.

Public API (used by `pmsctl validate`, `pmsctl diff`, `pmsctl up`):
`Problem`, `ValidDocument`, `Report`, `validate_paths()`, `validate_text()`, `validate_stream()`, `validate_body()`,
`load_practices()`, `load_schema()`, `PracticeFilesInvalid`.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema

from reconciler import API_VERSION, KIND
from reconciler.api import hints
from reconciler.api.convert import API_VERSIONS, V1, V1ALPHA1
from reconciler.api.durations import duration_ns
from reconciler.api.spec import PracticeSpec
from reconciler.api.stream import StreamDocument
from reconciler.api.yamlsource import (
    DEFAULT_LIMITS,
    Limits,
    PathKey,
    SourceDocument,
    YamlSourceError,
    load_documents,
    read_text,
)

SCHEMA_RESOURCE = "practicewriteback.v1alpha1.schema.json"
#: The schema of each served apiVersion (`reconciler.api.convert.API_VERSIONS`).
SCHEMA_RESOURCES = {
    V1ALPHA1: SCHEMA_RESOURCE,
    V1: "practicewriteback.v1.schema.json",
}
FILE_PATH = "<file>"
DOCUMENT_PATH = "<document>"
CREDENTIALS_MESSAGE = "do not put credentials in the resource; reference a Secret with spec.pms.credentialsSecretRef.name"
_CREDENTIAL_KEY = hints.CREDENTIAL_KEY


@dataclass(frozen=True)
class Problem:
    """One finding: where (file, 1-based line and col, field path) and what to do about it."""

    file: str
    line: int
    col: int
    path: str
    message: str
    #: In a stream (`validate -`): which document, e.g. `document 3 (PracticeWriteback ns/a,
    #: from base/x/practice.yaml)`; empty for files, where file and line say it all.
    document: str = ""

    def __str__(self) -> str:
        where = f" [{self.document}]" if self.document else ""
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}{where}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON output shape (`document` only for a stream)."""
        out: dict[str, Any] = {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }
        if self.document:
            out["document"] = self.document
        return out


@dataclass(frozen=True)
class Skipped:
    """A document of another kind, skipped under `--skip-other-kinds`."""

    file: str
    line: int
    col: int
    kind: str
    api_version: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: skipped {self.kind or '(no kind)'} ({self.api_version or 'no apiVersion'})"


@dataclass(frozen=True)
class ValidDocument:
    """A PracticeWriteback document that passed every check, with where it came from."""

    file: str
    line: int
    col: int
    index: int
    body: Mapping[str, Any] = field(repr=False)
    namespace: str | None
    name: str
    source: SourceDocument = field(repr=False, compare=False)

    @property
    def practice_id(self) -> str:
        """The document's spec.practiceId."""
        return str(self.body["spec"]["practiceId"])

    def spec(self) -> PracticeSpec:
        """The frozen desired state (defaults applied) of this document."""
        return PracticeSpec.from_resource(self.body)

    def position(self, path: PathKey) -> tuple[int, int]:
        """The (line, col) of a field path such as ("spec", "providerId") in the file."""
        return self.source.position(path)


@dataclass(frozen=True)
class Report:
    """Everything `validate_paths()` found: problems, valid documents and skipped documents."""

    files: tuple[str, ...]
    documents: tuple[ValidDocument, ...]
    problems: tuple[Problem, ...]
    skipped: tuple[Skipped, ...] = ()

    @property
    def ok(self) -> bool:
        """True when there is no problem at all."""
        return not self.problems


class PracticeFilesInvalid(Exception):
    """`load_practices()` found problems; `report` holds them (str() lists them)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        lines = [str(p) for p in report.problems]
        super().__init__(f"{len(lines)} problem(s) in practice files:\n" + "\n".join(lines))


class UsageError(Exception):
    """A path does not exist or holds no YAML files (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# The schema and the two validators compiled from it


@functools.cache
def load_schema(api_version: str = API_VERSION) -> dict[str, Any]:
    """The PracticeWriteback JSON Schema (draft 2020-12) of `api_version`: `schemas/`, reached
    through the package's `schemas` link (a copy in a built wheel)."""
    text = (
        resources.files("reconciler.api")
        .joinpath("schemas", SCHEMA_RESOURCES[api_version])
        .read_text(encoding="utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    # Kubernetes evaluates patterns with RE2, where `$` is the end of the text; in Python `$`
    # also matches before a final newline, so the trailing anchor becomes `\Z`.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _duration_error(bounds: Mapping[str, str], value: Any) -> str | None:
    if not isinstance(value, str) or not _regex("^([0-9]+(\\.[0-9]+)?(h|m|s|ms))+$").match(value):
        return None  # the pattern keyword reports malformed durations
    ns = duration_ns(value)
    if ns < duration_ns(bounds["minimum"]):
        return f"{value!r} is below the minimum of {bounds['minimum']}"
    if ns > duration_ns(bounds["maximum"]):
        return f"{value!r} is above the maximum of {bounds['maximum']}"
    return None


def _version_of(body: Any) -> str:
    """The served apiVersion whose schema checks `body` (the default one for anything else: its
    apiVersion const then reports the mistake)."""
    version = body.get("apiVersion") if isinstance(body, Mapping) else None
    return version if version in API_VERSIONS else API_VERSION


def _jsonschema_validator(api_version: str = API_VERSION) -> Any:
    import jsonschema
    from jsonschema.exceptions import ValidationError

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not _regex(patrn).search(instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def duration(
        validator: Any, bounds: Mapping[str, str], instance: Any, schema: Any
    ) -> Iterator[Any]:
        message = _duration_error(bounds, instance)
        if message:
            yield ValidationError(message)

    def required(validator: Any, names: Sequence[str], instance: Any, schema: Any) -> Iterator[Any]:
        # One error per `required` keyword naming every missing field (jsonschema's own yields
        # one error per missing field, each carrying the whole list): `_problems_from_error`
        # turns it into one problem per missing field, so each is reported exactly once.
        if validator.is_type(instance, "object"):
            missing = [n for n in names if n not in instance]
            if missing:
                yield ValidationError(f"missing required properties: {', '.join(missing)}")

    cls = jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        {"pattern": pattern, "required": required, "x-duration": duration},
    )
    return cls(load_schema(api_version))


_jsonschema = functools.cache(_jsonschema_validator)


def _fastjsonschema_form(pattern: str) -> str:
    """`pattern` with every `$` inside a character class escaped: fastjsonschema rewrites each
    unescaped `$` to `\\Z` (RE2's end of text, as `_regex` does), the literal ones in `[...]` too."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append("\\$" if in_class and char == "$" else char)
        if char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        i += 1
    return "".join(out)


def _within_duration_bounds(bounds: Mapping[str, str], value: Any) -> bool:
    return _duration_error(bounds, value) is None


_SUBSCHEMA = frozenset({"items", "additionalProperties", "if", "then", "else", "not"})
_SUBSCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf"})
_SUBSCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs"})


def _fastjsonschema_schema(node: Any, formats: dict[str, Callable[[Any], bool]]) -> Any:
    """A copy of a schema node in the form fastjsonschema checks as jsonschema does: `format` is
    an annotation here (jsonschema does not assert it by default), `x-duration` bounds become a
    custom format in `formats`, and patterns get `_fastjsonschema_form`."""
    if not isinstance(node, Mapping):
        return node  # `true`/`false` schemas

    def sub(value: Any) -> Any:
        return _fastjsonschema_schema(value, formats)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SUBSCHEMA:
            out[key] = sub(value)
        elif key in _SUBSCHEMA_LIST:
            out[key] = [sub(item) for item in value]
        elif key in _SUBSCHEMA_MAP:
            out[key] = {name: sub(item) for name, item in value.items()}
        elif key == "pattern":
            out[key] = _fastjsonschema_form(value)
        elif key == "x-duration":
            name = f"x-duration {value['minimum']}..{value['maximum']}"
            formats[name] = functools.partial(_within_duration_bounds, value)
            out["format"] = name
        elif key != "format":
            out[key] = value
    return out


@functools.cache
def _fast_check(api_version: str = API_VERSION) -> Callable[[Any], Any]:
    formats: dict[str, Callable[[Any], bool]] = {}
    schema = _fastjsonschema_schema(load_schema(api_version), formats)
    # Every keyword the schema uses is in draft-07 (`$defs` is reached by plain JSON pointers).
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    check: Callable[[Any], Any] = fastjsonschema.compile(schema, formats=formats, use_default=False)
    return check


def is_valid_body(body: Any) -> bool:
    """The schema's verdict on one resource body, fast (no messages)."""
    try:
        _fast_check(_version_of(body))(body)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Turning jsonschema errors into Problems


def format_path(path: Iterable[str | int]) -> str:
    """`("spec", "sync", "patients", "interval")` -> `spec.sync.patients.interval`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or DOCUMENT_PATH


def _schema_node(
    path: Sequence[Any], api_version: str = API_VERSION
) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """Follow a jsonschema schema path through $refs; return the node and the innermost
    allOf item that carries an `x-rule`, if the path went through one."""
    root = load_schema(api_version)
    node: Any = root
    rule: Mapping[str, Any] | None = None
    for step in path:
        while isinstance(node, Mapping) and "$ref" in node and step not in node:
            node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
        node = node[step]
        if isinstance(node, Mapping) and "x-rule" in node:
            rule = node["x-rule"]
    return node, rule


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
    "object": "a mapping",
}
_TYPE_NAMES |= {"array": "a list", "number": "a number", "null": "null"}


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _problems_from_error(error: Any, file: str, doc: SourceDocument) -> list[Problem]:
    path: PathKey = tuple(error.absolute_path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    value = error.instance
    version = _version_of(doc.value)
    rule = None
    if "then" in error.absolute_schema_path:
        _, rule = _schema_node(list(error.absolute_schema_path)[:-1], version)

    def at(p: PathKey, message: str) -> Problem:
        line, col = doc.position(p)
        return Problem(file, line, col, format_path(p), message)

    custom = (schema.get("x-messages") or {}).get(keyword)
    if keyword == "required":
        missing = [n for n in error.validator_value if isinstance(value, dict) and n not in value]
        out = []
        for name in missing:
            line, col = doc.position(path)  # the parent's key: the missing field has no position
            out.append(
                Problem(
                    file,
                    line,
                    col,
                    format_path((*path, name)),
                    rule["message"] if rule else "is required",
                )
            )
        return out
    if keyword == "additionalProperties":
        allowed = sorted(schema.get("properties", ()))
        extras = [k for k in value if k not in allowed] if isinstance(value, dict) else []
        out = []
        for key in extras:
            message = _unknown_field_message(str(key), path, allowed, version)
            out.append(at((*path, key), message))
        return out
    if rule is not None:
        return [
            at(path, f"{value!r}: {rule['message']}" if isinstance(value, str) else rule["message"])
        ]
    if keyword == "type":
        expected = error.validator_value
        names = " or ".join(
            _TYPE_NAMES.get(t, t) for t in ([expected] if isinstance(expected, str) else expected)
        )
        msg = f"expected {names}, got {_describe_value(value)}" + _type_hint(
            expected, value, path, doc, schema
        )
    elif keyword == "enum":
        options = [str(o) for o in error.validator_value]
        guess = hints.closest(value, options) if isinstance(value, str) else None
        msg = f"{value!r} is not one of {', '.join(options)}" + (
            f" (did you mean {guess}?)" if guess else ""
        )
    elif keyword == "const":
        msg = f"{value!r} must be {error.validator_value!r}"
    elif keyword == "pattern":
        if path[-2:] == ("pms", "url") and isinstance(value, str):
            # Never echo a user, password or query: they may carry a credential.
            shown, secretish = _redact_url(value)
            msg = (
                (CREDENTIALS_MESSAGE + " (no user, password or query in the URL)")
                if secretish
                else _url_message(shown, custom, error.validator_value)
            )
        else:
            msg = f"{value!r} " + (custom or f"does not match the pattern {error.validator_value}")
            msg += _pattern_hint(value, path, schema, error.validator_value)
    elif keyword == "minLength":
        msg = (
            "must not be empty"
            if error.validator_value == 1
            else f"{value!r} is shorter than {error.validator_value} characters"
        )
    elif keyword == "maxLength":
        msg = f"is {len(value)} characters long, more than the maximum of {error.validator_value}"
    elif keyword == "minimum":
        msg = f"{value} is below the minimum of {error.validator_value}"
    elif keyword == "maximum":
        msg = f"{value} is above the maximum of {error.validator_value}"
    elif custom:
        msg = custom
    else:
        msg = error.message
    return [at(path, msg)]


def _key(path: PathKey) -> str | None:
    """The field's own key, for a `key: value` example (None for a list item or the root)."""
    return path[-1] if path and isinstance(path[-1], str) else None


def _type_hint(
    expected: Any, value: Any, path: PathKey, doc: SourceDocument, schema: Mapping[str, Any]
) -> str:
    """How to write `value` as the type the schema expects, or "" when there is no fix to show.
    Works from the source text: YAML turned `0042` into 34 and `Off` into false."""
    key = _key(path)
    source = doc.sources.get(path)
    if key is None:
        return ""
    if expected == "string":
        if (
            "x-duration" in schema
            and not isinstance(value, bool)
            and isinstance(value, int | float)
        ):
            return f"; a duration needs a unit: {key}: {source or value}s"
        if value is not None and source is not None:
            lost = hints.leading_zeros_lost(source, value)
            note = (
                f" (YAML reads the unquoted {source} as a number and drops its leading zeros)"
                if lost
                else ""
            )
            return f"{note}; quote it: {hints.quoted(key, source)}"
        if value is None:
            return f"; write a value after {key}:"
    if expected == "boolean" and isinstance(value, str):
        meant = hints.BOOLEAN_WORDS.get(value.strip().casefold())
        if meant is not None:
            return f"; write it without quotes: {key}: {str(meant).lower()}"
    if expected == "integer" and isinstance(value, str):
        number = re.fullmatch(r"\s*([0-9]+)\s*[A-Za-z]*\s*", value)
        if number:
            return f"; write the number alone: {key}: {number.group(1)}"
    if expected == "object":
        if isinstance(value, str) and (pair := hints.missing_space_after_colon(value)):
            return f"; put a space after the colon: {pair[0]}: {pair[1]}"
        if not isinstance(value, list):
            fields = list(schema.get("properties", ()))
            if schema.get("minProperties") and fields:
                return f"; add {' or '.join(fields)} indented below it"
            if schema.get("required"):
                return f"; add {', '.join(schema['required'])} indented below it"
            return "; add its fields indented below it, or remove the line"
    return ""


def _pattern_hint(value: Any, path: PathKey, schema: Mapping[str, Any], pattern: str) -> str:
    """A corrected value for a string the pattern refused, when one is obvious."""
    key = _key(path)
    if not isinstance(value, str) or key is None:
        return ""
    if "x-duration" in schema:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value.strip()):
            return f"; a duration needs a unit: {key}: {value.strip()}s"
        meant = hints.duration(value)
        if meant and _regex(pattern).search(meant):
            return f" (did you mean {key}: {meant}?)"
    if "RFC 1123" in str((schema.get("x-messages") or {}).get("pattern", "")):
        name = hints.dns_name(value)
        if name and name != value and _regex(pattern).search(name):
            return f"; for example {name!r}"
    return ""


def _url_message(shown: str, custom: str | None, pattern: str) -> str:
    """The pattern message for a URL, naming https when that is the whole fix."""
    scheme, sep, rest = shown.partition("://")
    if sep and scheme.lower() == "http" and _regex(pattern).search("https://" + rest):
        return (
            f"{shown!r} uses http:// for a remote host; use https://{rest} "
            "(http:// only for 127.0.0.1, localhost or [::1])"
        )
    return f"{shown!r} {custom}"


@functools.cache
def _field_homes(api_version: str = API_VERSION) -> dict[str, tuple[str, ...]]:
    """Every field name of the resource (status aside) -> the dotted paths of the mappings
    that hold it, so a key written under the wrong parent can be sent home."""
    root = load_schema(api_version)
    homes: dict[str, list[str]] = {}

    def walk(node: Mapping[str, Any], where: str, depth: int) -> None:
        while "$ref" in node:
            node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
        for name, child in node.get("properties", {}).items():
            if name == "status" or depth > 8:
                continue
            homes.setdefault(name, []).append(where)
            walk(child, f"{where}.{name}" if where else name, depth + 1)

    walk(root, "", 0)
    return {name: tuple(places) for name, places in homes.items()}


#: v1alpha1 fields that live elsewhere in v1 (reconciler.api.convert), by their v1alpha1 path.
_MOVED_IN_V1 = {"spec.patientProfilePhotos": "spec.sync.patients.profilePhotos"}


def _unknown_field_message(
    key: str, path: PathKey, allowed: Sequence[str], api_version: str = API_VERSION
) -> str:
    """`unknown field` with the way out: where the key belongs (a key indented under the wrong
    parent, such as credentialsSecretRef one level too far out), else the Secret reference for
    a credential, else the closest allowed key (a typo), then the allowed keys."""
    here = format_path(path) if path else ""
    moved = _MOVED_IN_V1.get(f"{here}.{key}") if api_version == V1 else None
    if moved:
        return f"unknown field {key!r}; in {V1} it is {moved} (`pmsctl migrate` moves it)"
    places = [p for p in _field_homes(api_version).get(key, ()) if p and p != here]
    if places:
        # The nearest homes: a key slips by an indentation level, not across the document.
        nearness = {p: _shared_prefix(p, here) for p in places}
        places = [p for p in places if nearness[p] == max(nearness.values())]
        where = places[0] if len(places) == 1 else _common_parent(places)
        return f"unknown field {key!r}; {key} is a field of {where}: check its indentation"
    if _CREDENTIAL_KEY.search(key):
        return CREDENTIALS_MESSAGE
    guess = hints.closest(key, allowed)
    return (
        f"unknown field {key!r}"
        + (f" (did you mean {guess!r}?)" if guess else "")
        + (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
    )


def _shared_prefix(a: str, b: str) -> int:
    """How many leading dotted parts two paths share."""
    count = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        count += 1
    return count


def _common_parent(places: Sequence[str]) -> str:
    """`each entry under spec.sync` for siblings that all hold the field, else the list."""
    parents = {p.rpartition(".")[0] for p in places}
    if len(parents) == 1 and "" not in parents:
        return f"each entry under {parents.pop()}"
    return " or ".join(places)


def _redact_url(url: str) -> tuple[str, bool]:
    """The URL without query and fragment, and whether it carried a user, password or query."""
    base = re.split(r"[?#]", url, maxsplit=1)[0]
    _, sep, rest = base.partition("://")
    has_userinfo = bool(sep) and "@" in rest.split("/", 1)[0]
    return base, has_userinfo or "?" in url


def schema_problems(body: Any, file: str, doc: SourceDocument) -> list[Problem]:
    """Every schema finding on one document, with positions from `doc`."""
    if is_valid_body(body):
        return []
    problems: list[Problem] = []
    for error in _jsonschema(_version_of(body)).iter_errors(body):
        problems.extend(_problems_from_error(error, file, doc))
    return problems


# ---------------------------------------------------------------------------------------------
# Documents, files and folders


@dataclass
class _Seen:
    practice_ids: dict[str, str] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)


def _document_problems(
    doc: SourceDocument, file: str, skip_other_kinds: bool, skipped: list[Skipped]
) -> tuple[list[Problem], bool]:
    """(problems, is_ours) for one document before the schema runs."""
    body = doc.value

    def at(p: PathKey, message: str) -> Problem:
        line, col = doc.position(p)
        return Problem(file, line, col, format_path(p), message)

    if not isinstance(body, dict):
        return [
            at(
                (),
                f"expected a PracticeWriteback resource (a mapping), got {_describe_value(body)}",
            )
        ], False
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind == "Secret":
        secret = _secret_problem(doc, file)
        if secret is not None:
            return [secret], False
    if kind != KIND:
        meant = hints.closest(kind, [KIND]) if isinstance(kind, str) else None
        if skip_other_kinds and isinstance(kind, str) and kind and not meant:
            skipped.append(Skipped(file, doc.line, doc.col, kind, str(api_version or "")))
            return [], False
        if kind is None:
            return [at(("kind",), f"kind is required: kind: {KIND}")], False
        if meant:
            case = " kinds are case-sensitive" if str(kind).casefold() == KIND.casefold() else ""
            return [at(("kind",), f"{kind!r} is not {KIND} (did you mean {KIND}?{case})")], False
        hint = "" if skip_other_kinds else " (pass --skip-other-kinds to skip other kinds)"
        return [at(("kind",), f"{kind!r} is not {KIND}{hint}")], False
    if api_version not in API_VERSIONS:
        if api_version is None:
            return [at(("apiVersion",), f"apiVersion is required: apiVersion: {V1}")], True
        served = " or ".join(reversed(API_VERSIONS))
        return [at(("apiVersion",), f"{api_version!r} is not supported; use {served}")], True
    return [], True


def _secret_problem(doc: SourceDocument, file: str) -> Problem | None:
    """A Secret with values, committed next to the practices: the credentials are in git for
    everyone who can read the repository, now and in its history. A Secret without values, and
    a SOPS-encrypted one (its `sops` block), are fine. Never shows a value."""
    body = doc.value
    if "sops" in body:
        return None
    held = [k for k in ("stringData", "data") if isinstance(body.get(k), dict) and body[k]]
    if not held:
        return None
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    shown = f"Secret {name!r}" if isinstance(name, str) else "a Secret"
    base64 = " (base64 is not encryption)" if held[0] == "data" else ""
    line, col = doc.position((held[0],))
    return Problem(
        file,
        line,
        col,
        held[0],
        f"document {doc.index + 1}, {shown}, holds values in plain text{base64}; credentials "
        "committed to git stay readable in its history: commit a SealedSecret, an "
        "ExternalSecret or a SOPS-encrypted file instead, or keep the Secret out of git",
    )


def _check_documents(
    docs: list[SourceDocument],
    file: str,
    seen: _Seen,
    skip_other_kinds: bool,
    skipped: list[Skipped],
) -> tuple[list[ValidDocument], list[Problem]]:
    valid: list[ValidDocument] = []
    problems: list[Problem] = []
    for doc in docs:
        if doc.value is None:
            continue  # an empty document between separators (`---` at the end of a file)
        issues = [Problem(file, i.line, i.col, format_path(i.path), i.message) for i in doc.issues]
        found, ours = _document_problems(doc, file, skip_other_kinds, skipped)
        found = issues + found
        if ours and not found:
            found = schema_problems(doc.value, file, doc)
        if ours:
            found.extend(_duplicates(doc, file, seen))
        problems.extend(found)
        if ours and not found:
            meta = doc.value["metadata"]
            valid.append(
                ValidDocument(
                    file,
                    doc.line,
                    doc.col,
                    doc.index,
                    doc.value,
                    meta.get("namespace"),
                    meta["name"],
                    doc,
                )
            )
    if not any(d.value is not None for d in docs):
        problems.append(
            Problem(file, 1, 1, FILE_PATH, f"the file is empty; expected a {KIND} document")
        )
    return valid, problems


def _duplicates(doc: SourceDocument, file: str, seen: _Seen) -> list[Problem]:
    body = doc.value
    out: list[Problem] = []
    spec, meta = body.get("spec"), body.get("metadata")
    here_line = doc.position(("metadata", "name"))[0]
    practice_id = spec.get("practiceId") if isinstance(spec, dict) else None
    if isinstance(practice_id, str):
        line, col = doc.position(("spec", "practiceId"))
        where = f"{file}:{line}"
        first = seen.practice_ids.setdefault(practice_id, where)
        if first != where:
            out.append(
                Problem(
                    file,
                    line,
                    col,
                    "spec.practiceId",
                    f"practiceId {practice_id!r} is also used at {first}",
                )
            )
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str):
        namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
        line, col = doc.position(("metadata", "name"))
        where = f"{file}:{here_line}"
        first = seen.names.setdefault((namespace, name), where)
        if first != where:
            shown = f"{namespace}/{name}" if namespace else f"{name} (no namespace)"
            out.append(
                Problem(file, line, col, "metadata.name", f"{shown} is also defined at {first}")
            )
    return out


def validate_text(
    text: str,
    filename: str,
    *,
    skip_other_kinds: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[ValidDocument], list[Problem]]:
    """Validate the YAML text of one file (every document in it, duplicates among them too)."""
    valid, problems = _validate_one(text, filename, _Seen(), skip_other_kinds, [], limits)
    return valid, problems


def _validate_one(
    text: str,
    filename: str,
    seen: _Seen,
    skip_other_kinds: bool,
    skipped: list[Skipped],
    limits: Limits,
) -> tuple[list[ValidDocument], list[Problem]]:
    docs, error = load_documents(text, limits=limits)
    valid, problems = (
        _check_documents(docs, filename, seen, skip_other_kinds, skipped)
        if docs or not error
        else ([], [])
    )
    if error is not None:
        problems.append(
            Problem(filename, max(error.line, 1), max(error.col, 1), FILE_PATH, error.message)
        )
    problems.sort(key=lambda p: (p.line, p.col, p.path))
    return valid, problems


def broken_link(path: Path) -> str | None:
    """Why `path`, a symlink, leads nowhere (its target, and: missing or a loop); None when it
    is not a symlink or its target exists."""
    if not path.is_symlink():
        return None
    try:
        target = os.readlink(path)
    except OSError:
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return f"symlink to {target}, which does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink to {target}, which loops (a chain of links that never ends)"
        return f"symlink to {target}, which cannot be followed: {exc.strerror}"
    return None


def broken_links(folder: Path, *, skip_hidden: bool = False) -> list[Problem]:
    """A problem for each symlink under `folder` that leads nowhere (dangling or a loop) and may
    have stood for practices: named or pointing at *.yaml/*.yml, or with no suffix (a folder).
    Such a link is never read, so without this it would vanish from the report silently."""
    problems = []
    for path in sorted(folder.rglob("*")):
        if skip_hidden and any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        why = broken_link(path)
        if why is None:
            continue
        suffixes = (Path(os.readlink(path)).suffix, path.suffix)
        if any(s in (".yaml", ".yml") for s in suffixes) or not path.suffix:
            problems.append(Problem(str(path), 1, 1, FILE_PATH, f"{why}; it is not read"))
    return problems


def iter_yaml_files(
    paths: Iterable[str | os.PathLike[str]], links: list[Problem] | None = None
) -> Iterator[Path]:
    """The YAML files named or found (recursively, sorted) under `paths`; UsageError when a
    path does not exist or a folder has no YAML files (nor broken links). Broken symlinks
    found are appended to `links` (`broken_links`)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
            )
            broken = broken_links(path)
            if links is not None:
                links.extend(broken)
            if not found and not broken:
                raise UsageError(f"{path}: no *.yaml or *.yml files in this folder")
            yield from found
        elif path.is_file():
            yield path
        elif (why := broken_link(path)) is not None:
            if links is None:
                raise UsageError(f"{path}: {why}")
            links.append(Problem(str(path), 1, 1, FILE_PATH, f"{why}; it is not read"))
        else:
            raise UsageError(f"{path}: no such file or folder")


def validate_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    skip_other_kinds: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> Report:
    """Validate files and folders (recursive `*.yaml`/`*.yml`, multi-document), including the
    duplicate checks across all of them. Raises UsageError for a missing path."""
    links: list[Problem] = []
    files = list(dict.fromkeys(iter_yaml_files(paths, links)))
    seen = _Seen()
    skipped: list[Skipped] = []
    documents: list[ValidDocument] = []
    problems: list[Problem] = list(links)
    for path in files:
        name = str(path)
        try:
            text = read_text(path, limits=limits)
        except YamlSourceError as exc:
            problems.append(
                Problem(name, max(exc.line, 1), max(exc.col, 1), FILE_PATH, exc.message)
            )
            continue
        valid, found = _validate_one(text, name, seen, skip_other_kinds, skipped, limits)
        documents.extend(valid)
        problems.extend(found)
    return Report(tuple(str(p) for p in files), tuple(documents), tuple(problems), tuple(skipped))


#: The name a stream's problems carry in place of a file.
STDIN_NAME = "<stdin>"
#: A stream holds a whole rendered fleet: the per-document limits still apply, the size cap is
#: for the stream.
STREAM_LIMITS = Limits(max_bytes=1 << 30)


def validate_stream(
    text: str,
    name: str = STDIN_NAME,
    *,
    skip_other_kinds: bool = False,
    limits: Limits = STREAM_LIMITS,
) -> Report:
    """Validate a multi-document stream (`kubectl kustomize DIR | pmsctl validate -`). Lines
    are the stream's; each problem also names its document (`Problem.document`: index, kind,
    namespace/name, and the source file from kustomize's origin annotation when present)."""
    seen = _Seen()
    skipped: list[Skipped] = []
    docs, error = load_documents(text, limits=limits)
    valid, problems = (
        _check_documents(docs, name, seen, skip_other_kinds, skipped)
        if docs or not error
        else ([], [])
    )
    if error is not None:
        problems.append(
            Problem(name, max(error.line, 1), max(error.col, 1), FILE_PATH, error.message)
        )
    landmarks = [StreamDocument.of(d.index, d.line, d.value) for d in docs if d.value is not None]
    starts = [d.line for d in landmarks]

    def placed(p: Problem) -> Problem:
        if error is not None and p.path == FILE_PATH and p.message == error.message:
            # The document the syntax error is in was not read: only its index is known.
            return dataclasses.replace(p, document=f"document {len(docs) + 1}")
        at = bisect.bisect_right(starts, p.line) - 1
        return p if at < 0 else dataclasses.replace(p, document=landmarks[at].describe())

    problems = sorted((placed(p) for p in problems), key=lambda p: (p.line, p.col, p.path))
    return Report((name,), tuple(valid), tuple(problems), tuple(skipped))


def validate_body(body: Mapping[str, Any], name: str = "<object>") -> list[Problem]:
    """Schema findings for a resource body that did not come from a file (line and col 0)."""
    doc = SourceDocument(0, 0, 0, body, {})
    found, ours = _document_problems(doc, name, False, [])
    if ours and not found:
        found = schema_problems(dict(body), name, doc)
    return found


def load_practices(
    paths: Iterable[str | os.PathLike[str]], *, skip_other_kinds: bool = True
) -> list[ValidDocument]:
    """Every PracticeWriteback under `paths`, validated; raises PracticeFilesInvalid listing
    every problem when any file is invalid (and UsageError for a missing path). Call
    `.spec()` on an item for its PracticeSpec; `.namespace`/`.name` are the metadata."""
    report = validate_paths(paths, skip_other_kinds=skip_other_kinds)
    if not report.ok:
        raise PracticeFilesInvalid(report)
    return list(report.documents)
