"""Where a document sits in a multi-document stream (`kubectl kustomize DIR | pmsctl validate -`).

A rendered stream has no files, so a finding needs other landmarks: the document's index, kind
and namespace/name, and, when kustomize wrote them (`buildMetadata: [originAnnotations,
transformerAnnotations]`), the source file the object came from (`config.kubernetes.io/origin`)
and the kustomizations that patched it (`alpha.config.kubernetes.io/transformations`). Pure:
`StreamDocument.of(index, line, body)` reads them from a parsed body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

#: The annotation kustomize writes under `buildMetadata: [originAnnotations]`.
ORIGIN_ANNOTATION = "config.kubernetes.io/origin"
#: The annotation kustomize writes under `buildMetadata: [transformerAnnotations]`.
TRANSFORMATIONS_ANNOTATION = "alpha.config.kubernetes.io/transformations"

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _annotations(body: Any) -> Mapping[str, Any]:
    meta = body.get("metadata") if isinstance(body, Mapping) else None
    notes = meta.get("annotations") if isinstance(meta, Mapping) else None
    return notes if isinstance(notes, Mapping) else {}


def _load(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return None


#: kustomize writes these annotations in one shape; read them without a YAML parser when they
#: have it (the parser is the fallback).
_PLAIN_ORIGIN = re.compile(r"\Apath: ([^\s'\"#]+)\n?\Z")
_CONFIGURED_IN = re.compile(r"^- configuredIn: (\S+)$", re.MULTILINE)


def origin_of(body: Any) -> str | None:
    """The source file kustomize's origin annotation names (`path:`, with `repo:`/`ref:` for a
    remote base), or None."""
    raw = _annotations(body).get(ORIGIN_ANNOTATION)
    plain = _PLAIN_ORIGIN.match(raw) if isinstance(raw, str) else None
    if plain:
        return plain.group(1)
    origin = _load(raw)
    if not isinstance(origin, Mapping) or not isinstance(origin.get("path"), str):
        return None
    path = str(origin["path"])
    repo = origin.get("repo")
    if isinstance(repo, str):
        ref = origin.get("ref")
        return f"{repo}//{path}" + (f"?ref={ref}" if isinstance(ref, str) else "")
    return path


def configured_in(body: Any) -> tuple[str, ...]:
    """The kustomization files that transformed the object (its transformations annotation),
    in kustomize's order (innermost first); empty when the annotation is absent."""
    raw = _annotations(body).get(TRANSFORMATIONS_ANNOTATION)
    if isinstance(raw, str) and "'" not in raw and '"' not in raw:
        return tuple(dict.fromkeys(_CONFIGURED_IN.findall(raw)))
    steps = _load(raw)
    if not isinstance(steps, list):
        return ()
    found = [s.get("configuredIn") for s in steps if isinstance(s, Mapping)]
    return tuple(dict.fromkeys(p for p in found if isinstance(p, str)))


@dataclass(frozen=True)
class StreamDocument:
    """One document of a stream: 0-based `index`, 1-based `line` where it starts, its kind and
    identity as far as it has them, and the kustomize landmarks when present."""

    index: int
    line: int
    kind: str | None
    namespace: str | None
    name: str | None
    origin: str | None = None
    configured_in: tuple[str, ...] = ()

    @classmethod
    def of(cls, index: int, line: int, body: Any) -> StreamDocument:
        """The landmarks of a parsed document `body` (any value; a non-mapping has none)."""
        if not isinstance(body, Mapping):
            return cls(index, line, None, None, None)
        meta = body.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        kind, ns, name = body.get("kind"), meta.get("namespace"), meta.get("name")
        return cls(
            index,
            line,
            kind if isinstance(kind, str) else None,
            ns if isinstance(ns, str) else None,
            name if isinstance(name, str) else None,
            origin_of(body),
            configured_in(body),
        )

    @property
    def identity(self) -> str:
        """`namespace/name`, `name`, or `(no name)`."""
        if self.name is None:
            return "(no name)"
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def describe(self) -> str:
        """`document 3 (PracticeWriteback ns/name, from base/x/practice.yaml)`; 1-based."""
        parts = [f"{self.kind or '(no kind)'} {self.identity}"]
        if self.origin:
            parts.append(f"from {self.origin}")
        overlays = [p for p in self.configured_in if p != self.origin]
        if overlays:
            parts.append("patched by " + ", ".join(overlays))
        return f"document {self.index + 1} ({', '.join(parts)})"
