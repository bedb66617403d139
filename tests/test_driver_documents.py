"""Open Dental documents: upload and list them back by read-from category, over real HTTP.

Real: the simulator's Open Dental API (aiohttp, in-memory SQLite) on a loopback port, the driver
on a client from `pms_drivers.transport.new_client`. The documented fields are used both ways:
`POST /documents/Upload` with PatNum, rawBase64, extension, Description, DateCreated,
DocCategory, ImgType, ProvNum; `GET /documents?PatNum=&DocCategory=` answering DocNum, PatNum,
Description, DateCreated, DocCategory, ImgType, ProvNum, FileName.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from pms_drivers.base import Credentials, DocumentUpload
from pms_drivers.errors import PermanentPmsError
from pms_drivers.opendental import OpenDentalDriver
from pms_drivers.transport import new_client
from pms_simulator import Simulator

PID = "od-documents"


@dataclass
class Env:
    sim: Simulator
    driver: OpenDentalDriver
    categories: dict[str, str]


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(db=":memory:", autotick=False)
    async with sim.serve(host="127.0.0.1", port=0):
        creds = Credentials(dict(sim.add_practice(PID, "OpenDental")))
        base = sim.base_url("OpenDental")
        async with new_client(base, timeout=5, rate_per_second=0, burst=1) as client:
            driver = OpenDentalDriver(client, base, creds)
            cats = {c.name: c.id for c in await driver.list_document_categories()}
            yield Env(sim, driver, cats)


def _upload(
    env: Env, writeback_id: str, category: str, filename: str, ctype: str
) -> DocumentUpload:
    return DocumentUpload(
        writeback_id=writeback_id,
        kind="insuranceVerification"
        if category == "Insurance Verification"
        else "accountStatement",
        patient_id="12",
        category_id=env.categories[category],
        provider_id="2",
        occurred_at="2026-11-26T10:30:00",
        filename=filename,
        content=b"%PDF-1.4 " + writeback_id.encode(),
        content_type=ctype,
    )


async def test_uploaded_documents_are_listed_back_from_their_read_from_categories(env: Env) -> None:
    verification = _upload(
        env, "doc-iv-1", "Insurance Verification", "eligibility.pdf", "application/pdf"
    )
    statement = _upload(env, "doc-st-1", "Statements", "statement-nov.pdf", "application/pdf")
    assert (await env.driver.upload_document(verification)).created
    assert (await env.driver.upload_document(statement)).created
    read_from = [env.categories["Insurance Verification"], env.categories["Statements"]]
    docs = await env.driver.list_documents("12", read_from)
    assert [(d.writeback, d.category_id) for d in docs] == [
        ("doc-iv-1", env.categories["Insurance Verification"]),
        ("doc-st-1", env.categories["Statements"]),
    ]
    first = docs[0]
    assert first.patient_id == "12" and first.provider_id == "2"
    assert first.created == "2026-11-26T10:30:00"
    assert first.description.startswith("eligibility [pmsctl provider=2 writeback=doc-iv-1]")
    assert first.filename.endswith(".pdf") and first.image_type == "Document"
    # One read per read-from category, each with the documented filter names.
    reads = [
        r for r in env.sim.requests(PID) if r.method == "GET" and r.path.endswith("/documents")
    ]
    assert {(r.query.get("PatNum"), r.query.get("DocCategory")) for r in reads[-2:]} == {
        ("12", read_from[0]),
        ("12", read_from[1]),
    }


async def test_a_category_filter_leaves_out_the_patients_other_documents(env: Env) -> None:
    await env.driver.upload_document(
        _upload(env, "doc-st-2", "Statements", "statement.pdf", "application/pdf")
    )
    everything = await env.driver.list_documents("12")
    statements = await env.driver.list_documents("12", [env.categories["Statements"]])
    verifications = await env.driver.list_documents(
        "12", [env.categories["Insurance Verification"]]
    )
    assert [d.writeback for d in statements] == ["doc-st-2"]
    assert verifications == []
    assert {d.id for d in statements} <= {d.id for d in everything}


async def test_an_image_upload_is_a_photo_and_a_retry_finds_the_first_upload(env: Env) -> None:
    card = _upload(env, "doc-card", "Insurance Verification", "card.png", "image/png")
    first = await env.driver.upload_document(card)
    again = await env.driver.upload_document(card)
    assert first.created and not again.created and again.id == first.id
    docs = await env.driver.list_documents("12", [env.categories["Insurance Verification"]])
    assert [(d.id, d.image_type) for d in docs] == [(first.id, "Photo")]


async def test_a_category_id_that_is_not_a_defnum_is_refused_before_sending(env: Env) -> None:
    with pytest.raises(PermanentPmsError, match="document category id 'Statements'"):
        await env.driver.list_documents("12", ["Statements"])
