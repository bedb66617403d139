"""`pmsctl writebacks list` as a `pmsctl up` user reads it: the table names the note or document
the PMS made (PMS-ID), so a sent writeback can be looked up in the PMS. Pure rendering, no I/O."""

from __future__ import annotations

from reconciler.cli.writebacks import render_table


def item(status: str, pms_id: str | None) -> dict[str, object]:
    return {
        "id": "wb-1", "practiceId": "bright-smiles", "kind": "note", "type": "outgoingSms",
        "patientId": "42", "status": status, "reason": None, "pmsId": pms_id, "attempts": 1,
        "createdAt": "2026-11-26T09:15:00Z",
    }  # fmt: skip


def test_the_default_table_shows_the_pms_id_of_a_sent_writeback() -> None:
    header, row = render_table([item("sent", "5008")], now=0).splitlines()
    columns = header.split()
    assert columns[columns.index("STATUS") :][:3] == ["STATUS", "REASON", "PMS-ID"]
    assert row.split()[columns.index("PMS-ID")] == "5008"


def test_a_writeback_not_written_yet_shows_none_for_its_pms_id() -> None:
    header, row = render_table([item("pending", None)], now=0).splitlines()
    assert row.split()[header.split().index("PMS-ID")] == "<none>"
