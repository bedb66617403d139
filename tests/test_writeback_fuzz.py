"""The writeback API fuzzed from its own OpenAPI document: no 5xx, every answer as documented.

Real: the writeback service (aiohttp on loopback, the SQLite queue, the drainer), the PMS drivers
and the PMS simulator (`running()` of the end-to-end tests), on an event loop of their own in a
background thread, since schemathesis sends its requests synchronously. schemathesis reads the
document (`reconciler.writeback.openapi`, which the service serves), generates valid and invalid
requests for
every operation (Hypothesis), sends them over real HTTP, and checks each answer: not a server
error, a documented status, the documented content type, headers and body schema. Examples are
limited so the whole run stays well under a minute.

Also here: the document in `docs/` is the one the code builds (regenerate it with
`python -m reconciler.writeback.openapi > docs/writeback.openapi.yaml`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_writeback_e2e import TOKEN, running

from reconciler.writeback.openapi import document

DOC = Path(__file__).resolve().parent.parent / "docs" / "writeback.openapi.yaml"
PRACTICES = [("od-fuzz", "OpenDental"), ("dx-fuzz", "Dentrix")]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running service (and simulator) on a loop in a background thread; stopped at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-service", daemon=True)
    thread.start()
    context = running(tmp_path_factory.mktemp("fuzz"), PRACTICES)
    try:
        _, _, _, url = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(30)
        try:
            yield url
        finally:
            asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# The document the code builds, which the service serves (checked below). Loaded here rather
# than from the running service: schemathesis's fixture-based loading does not work with the
# pytest this project uses.
schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    # generate only: schemathesis's "coverage" phase (run at collection, from the explicit
    # phase) took over a minute on the request schema's conditionals; shrinking a failure is
    # for a developer's run (`phases` below can be widened there).
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented_and_never_with_a_5xx(
    case: Any, service_url: str
) -> None:
    # Most generated writebacks go to a practice that exists, with a real time and a patient id
    # its PMS can hold (random strings almost never are), so intake, the decision and the queue
    # are fuzzed too, not only the 404 and the 400 for an impossible date.
    if (
        case.path == "/v1/practices/{practiceId}/writebacks"
        and isinstance(case.body, dict)
        and len(json.dumps(case.body, default=str)) % 4 != 0
    ):
        case.path_parameters = {"practiceId": PRACTICES[len(case.body) % 2][0]}
        if "occurredAt" in case.body:
            case.body["occurredAt"] = "2026-11-26T09:15:00-05:00"
        if "patientId" in case.body:
            case.body["patientId"] = str(2 + len(case.body))
    case.call_and_validate(
        base_url=service_url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS
    )


def test_the_served_document_is_the_one_in_docs(service_url: str) -> None:
    with urllib.request.urlopen(f"{service_url}/openapi.json", timeout=10) as resp:
        served = json.loads(resp.read())
    assert served == document()
    assert yaml.safe_load(DOC.read_text(encoding="utf-8")) == document(), (
        "docs/writeback.openapi.yaml is stale: run "
        "`python -m reconciler.writeback.openapi > docs/writeback.openapi.yaml`"
    )
