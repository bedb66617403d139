"""Convert PracticeWriteback resources between writeback.dental.dev/v1alpha1 and v1.

Pure functions over plain dicts: the conversion webhook, `PracticeSpec.from_resource`, `pmsctl
validate`, `pmsctl diff` and `pmsctl migrate` all call `convert()`. The input is never modified.

What changes between the versions (docs/versions.md gives the reasons):

- v1alpha1 `spec.patientProfilePhotos` is v1 `spec.sync.patients.profilePhotos`: photos come
  with the patient sync;
- v1alpha1 `spec.documents.<kind>.readFrom` is one category name, v1's is a list of names.

Round trips give back the same object in both directions. What one version cannot hold travels
in an annotation on the other, the way Kubernetes' own types keep fields across versions:

- `writeback.dental.dev/v1-fields` on a v1alpha1 object: the v1 readFrom names after the first;
- `writeback.dental.dev/v1alpha1-fields` on a v1 object: a v1alpha1 `patientProfilePhotos` set
  on a practice without `sync.patients` (v1 has no place for it outside `sync.patients`, and
  creating `sync.patients` would add a poller setting nobody wrote).

Both annotation keys are reserved: the conversion to v1 reads and removes v1-fields, the
conversion to v1alpha1 reads and removes v1alpha1-fields (when v1 had no place for its data) and
drops a v1-fields a v1 object should not carry. An empty
`metadata.annotations` map is treated as absent, as the API server does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from reconciler import GROUP

V1ALPHA1 = f"{GROUP}/v1alpha1"
V1 = f"{GROUP}/v1"
#: Every version this package reads, oldest first; the last one is the storage version.
API_VERSIONS = (V1ALPHA1, V1)
#: Where a v1alpha1 object keeps the v1 data it cannot hold.
V1_FIELDS = f"{GROUP}/v1-fields"
#: Where a v1 object keeps the v1alpha1 data it cannot hold.
V1ALPHA1_FIELDS = f"{GROUP}/v1alpha1-fields"


class ConversionError(ValueError):
    """The object cannot be converted: an unknown apiVersion, or a body that is not a resource."""


def convert(obj: Mapping[str, Any], to: str) -> dict[str, Any]:
    """A copy of `obj` as apiVersion `to` (a full `group/version`). Same version: a plain copy."""
    source = obj.get("apiVersion")
    if source not in API_VERSIONS:
        raise ConversionError(f"cannot convert from apiVersion {source!r}")
    if to not in API_VERSIONS:
        raise ConversionError(f"cannot convert to apiVersion {to!r}")
    out = copy.deepcopy(dict(obj))
    if source == to:
        return out
    if to == V1:
        return _to_v1(out)
    return _to_v1alpha1(out)


def spec_as_v1(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The `spec` of `obj` (either version) in the v1 shape."""
    spec = convert(obj, V1).get("spec")
    if not isinstance(spec, dict):
        raise ConversionError("the resource has no spec mapping")
    return spec


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise ConversionError("metadata is not a mapping")
    annotations = metadata.setdefault("annotations", {})
    if not isinstance(annotations, dict):
        raise ConversionError("metadata.annotations is not a mapping")
    return annotations


def _take(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """Remove the annotation `key` from `obj` and return its JSON object ({} when absent)."""
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(annotations, dict) or key not in annotations:
        return {}
    text = annotations.pop(key)
    _tidy(obj)
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"annotation {key} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"annotation {key} is not a JSON object")
    return data


def _put(obj: dict[str, Any], key: str, data: Mapping[str, Any]) -> None:
    annotations = _annotations(obj)
    annotations.pop(key, None)
    if data:
        annotations[key] = json.dumps(data, sort_keys=True, separators=(",", ":"))
    _tidy(obj)


def _tidy(obj: dict[str, Any]) -> None:
    """Drop an empty annotations map (the API server never stores one)."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and metadata.get("annotations") == {}:
        del metadata["annotations"]


def _spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else None


def _to_v1(obj: dict[str, Any]) -> dict[str, Any]:
    obj["apiVersion"] = V1
    more = _take(obj, V1_FIELDS).get("readFrom")
    if not isinstance(more, dict):
        more = {}
    kept: dict[str, Any] = {}
    spec = _spec(obj)
    if spec is not None:
        for kind, mapping in (spec.get("documents") or {}).items():
            if isinstance(mapping, dict) and "readFrom" in mapping:
                rest = more.get(kind)
                mapping["readFrom"] = [
                    mapping["readFrom"],
                    *(rest if isinstance(rest, list) else ()),
                ]
        if "patientProfilePhotos" in spec:
            photos = spec.pop("patientProfilePhotos")
            patients = (spec.get("sync") or {}).get("patients")
            if isinstance(patients, dict):
                patients["profilePhotos"] = photos
            else:
                kept["patientProfilePhotos"] = photos
    if kept:
        _put(obj, V1ALPHA1_FIELDS, kept)
    return obj


def _to_v1alpha1(obj: dict[str, Any]) -> dict[str, Any]:
    obj["apiVersion"] = V1ALPHA1
    spec = _spec(obj)
    patients = ((spec or {}).get("sync") or {}).get("patients")
    # The v1alpha1 data is needed back only when v1 had no place for it; otherwise a v1 client
    # may have changed the practice since, and the v1 fields win.
    # Left in place otherwise, so that converting back gives the same object.
    kept = _take(obj, V1ALPHA1_FIELDS) if not isinstance(patients, dict) else {}
    _take(obj, V1_FIELDS)  # reserved: only a v1alpha1 object carries it
    extra: dict[str, Any] = {}
    if spec is not None:
        for kind, mapping in (spec.get("documents") or {}).items():
            names = mapping.get("readFrom") if isinstance(mapping, dict) else None
            if isinstance(names, list) and names:
                mapping["readFrom"] = names[0]
                if len(names) > 1:
                    extra.setdefault("readFrom", {})[kind] = names[1:]
        if isinstance(patients, dict) and "profilePhotos" in patients:
            spec["patientProfilePhotos"] = patients.pop("profilePhotos")
        elif "patientProfilePhotos" in kept:
            spec["patientProfilePhotos"] = kept["patientProfilePhotos"]
    _put(obj, V1_FIELDS, extra)
    return obj
