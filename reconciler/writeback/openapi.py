"""The OpenAPI 3.1 document of the writeback API, built from the shapes the code uses.

`document()` is served at `GET /openapi.json` and written to `docs/writeback.openapi.yaml`
(`python -m reconciler.writeback.openapi > docs/writeback.openapi.yaml`; a test fails when the
file and the code drift). The request body is `model.REQUEST_SCHEMA` itself, so the document
cannot describe another request than the one the API checks. Pure: no I/O but `main()`.
"""

from __future__ import annotations

import sys
from typing import Any

from reconciler.writeback.model import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_SEQ,
    REQUEST_SCHEMA,
    RETRYABLE_SKIPS,
    FailReason,
    Kind,
    SkipReason,
    Status,
)

_REF = "#/components/schemas/"
_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{_REF}{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _request_schema() -> dict[str, Any]:
    # `$schema` and `$id` belong to a standalone schema file; inside OpenAPI 3.1 the dialect is
    # already 2020-12, and an `$id` would move the base URI of references.
    return {k: v for k, v in REQUEST_SCHEMA.items() if k not in ("$schema", "$id")}


_RECORD: dict[str, Any] = {
    "type": "object",
    "description": "A stored writeback (a document's bytes are never included).",
    "additionalProperties": False,
    "required": [
        "id",
        "practiceId",
        "callerId",
        "kind",
        "type",
        "patientId",
        "occurredAt",
        "status",
        "reason",
        "message",
        "attempts",
        "providerId",
        "pmsId",
        "createdAt",
        "updatedAt",
        "sentAt",
    ],
    "properties": {
        "id": {"type": "string", "pattern": "^wb-[0-9a-f]{32}$"},
        "practiceId": {"type": "string"},
        "callerId": {"type": "string"},
        "kind": {"enum": [k.value for k in Kind]},
        "type": {"type": "string", "description": "The writeback type or document type."},
        "patientId": {"type": "string"},
        "occurredAt": {"type": "string"},
        "status": {"enum": [s.value for s in Status]},
        "reason": {
            "type": ["string", "null"],
            "description": "Why it was skipped ("
            + ", ".join(r.value for r in SkipReason)
            + ") or failed ("
            + ", ".join(r.value for r in FailReason)
            + ").",
        },
        "message": {**_NULLABLE_STRING, "description": "What the spec or the PMS said."},
        "attempts": {"type": "integer", "minimum": 0},
        "noteTypeId": {**_NULLABLE_STRING, "description": "Notes: the PMS note type id."},
        "categoryId": {**_NULLABLE_STRING, "description": "Documents: the PMS category id."},
        "providerId": _NULLABLE_STRING,
        "pmsId": {**_NULLABLE_STRING, "description": "The PMS's id for it, once sent."},
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
        "sentAt": {"type": ["string", "null"], "format": "date-time"},
    },
}

_SCHEMAS: dict[str, Any] = {
    "WritebackRequest": _request_schema(),
    "Writeback": _RECORD,
    "Accepted": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "status"],
        "properties": {
            "id": {"type": "string", "pattern": "^wb-[0-9a-f]{32}$"},
            "status": {"enum": [Status.PENDING.value, Status.SKIPPED.value]},
            "reason": {"enum": [r.value for r in SkipReason]},
            "message": {"type": "string"},
        },
    },
    "Page": {
        "type": "object",
        "additionalProperties": False,
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": _ref("Writeback")},
            "next": {
                "type": ["integer", "null"],
                "description": "Pass as `after` for the next page; null on the last one.",
            },
        },
    },
    "Retried": {
        "type": "object",
        "additionalProperties": False,
        "required": ["retried"],
        "properties": {"retried": {"type": "array", "items": {"type": "string"}}},
    },
    "Error": {
        "type": "object",
        "additionalProperties": False,
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {
                        "type": "string",
                        "description": "What is wrong and what to do; quotes at most a few "
                        "dozen characters of the request.",
                    },
                    "field": {"type": "string", "description": "The field or parameter."},
                },
            }
        },
    },
}

_PRACTICE_ID = {
    "name": "practiceId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_WRITEBACK_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_UNAUTHORIZED = {
    **_error("Missing or wrong bearer token."),
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "The record's URL."}}


def document() -> dict[str, Any]:
    """The OpenAPI document, as a plain dict (JSON- and YAML-ready)."""
    statuses = "|".join(s.value for s in Status)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pmsctl writeback API",
            "version": "v1",
            "description": (
                "Communication events in, PMS notes and documents out. A request is stored "
                "(fsynced) before it is acknowledged; delivery to the practice's PMS is in the "
                "background, exactly once per (practiceId, callerId), in order per practice. "
                "See docs/writeback.md."
            ),
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
        },
        "paths": {
            "/v1/practices/{practiceId}/writebacks": {
                "post": {
                    "operationId": "createWriteback",
                    "summary": "Take one writeback request (idempotent by callerId).",
                    "parameters": [_PRACTICE_ID],
                    "requestBody": {
                        "required": True,
                        "description": f"At most {DEFAULT_MAX_BODY_BYTES} bytes by default.",
                        "content": {"application/json": {"schema": _ref("WritebackRequest")}},
                    },
                    "responses": {
                        "200": {
                            **_json(_ref("Writeback"), "A replay: the stored record."),
                            "headers": _LOCATION,
                        },
                        "202": {
                            **_json(
                                _ref("Accepted"),
                                "Stored: pending (to be written) or "
                                "skipped (recorded, not written, with the reason).",
                            ),
                            "headers": _LOCATION,
                        },
                        "400": _error("Not JSON, nested too deeply, or an impossible value."),
                        "401": _UNAUTHORIZED,
                        "404": _error("No practice has this practiceId."),
                        "408": _error("The body did not arrive in time; send it again."),
                        "409": _error("callerId already used for a different writeback."),
                        "413": _error("The body is over the limit."),
                        "415": _error("Content-Type is not application/json."),
                        "422": _error(
                            "The body does not match WritebackRequest (a NUL character or a "
                            "lone surrogate in a string included), or patientId cannot exist "
                            "in the practice's PMS."
                        ),
                        "503": _error(
                            "Not stored; always with Retry-After: the queue is unavailable "
                            "(queue_unavailable: the database restarts, the file stays "
                            "locked), intake is overloaded (overloaded), or the practices are "
                            "still being loaded at start-up (practices_loading). Retry after "
                            "Retry-After seconds, same callerId."
                        ),
                    },
                }
            },
            "/v1/writebacks": {
                "get": {
                    "operationId": "listWritebacks",
                    "summary": "Writebacks in arrival order, filtered, paged.",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "description": f"Comma-separated, each one of {statuses}.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "practiceId",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 5000,
                                "default": 500,
                            },
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "The `next` of the previous page.",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": MAX_SEQ,
                                "default": 0,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Page"), "One page."),
                        "400": _error("A status, limit or after out of range."),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/v1/writebacks/{id}": {
                "get": {
                    "operationId": "getWriteback",
                    "parameters": [_WRITEBACK_ID],
                    "responses": {
                        "200": _json(_ref("Writeback"), "The record."),
                        "401": _UNAUTHORIZED,
                        "404": _error("No writeback has this id."),
                    },
                }
            },
            "/v1/writebacks/{id}/retry": {
                "post": {
                    "operationId": "retryWriteback",
                    "summary": "Put a failed writeback (or one skipped for what the PMS "
                    f"answered: {', '.join(RETRYABLE_SKIPS)}) back in the queue.",
                    "parameters": [_WRITEBACK_ID],
                    "responses": {
                        "200": _json(_ref("Writeback"), "Back to pending."),
                        "401": _UNAUTHORIZED,
                        "404": _error("No writeback has this id."),
                        "409": _error("It is neither failed nor skipped for a PMS answer."),
                    },
                }
            },
            "/v1/writebacks/retry": {
                "post": {
                    "operationId": "retryFailedWritebacks",
                    "summary": "Put every failed writeback (of practiceId, or all) back.",
                    "parameters": [
                        {
                            "name": "practiceId",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(_ref("Retried"), "The ids put back."),
                        "400": _error("practiceId is not valid Unicode."),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["ok"],
                                "properties": {"ok": {"const": True}},
                            },
                            "The service answers.",
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["ready"],
                                "properties": {"ready": {"const": True}},
                            },
                            "The practices are loaded: an unknown practiceId is 404.",
                        ),
                        "503": _error(
                            "Still loading the practices at start-up (Retry-After says when "
                            "to ask again)."
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}, "This document."),
                    },
                }
            },
        },
    }


def main() -> None:
    """Print the document as YAML (what `docs/writeback.openapi.yaml` holds)."""
    import yaml

    sys.stdout.write(
        "# Generated by `python -m reconciler.writeback.openapi`; edit the code, not this file.\n"
    )
    sys.stdout.write(yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100))


if __name__ == "__main__":
    main()
