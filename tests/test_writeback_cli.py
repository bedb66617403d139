"""`pmsctl writebacks list|retry`, on the queue file and through a running service.

Real: the CLI entry point (`reconciler.cli.main`), the SQLite queue file, and for `--server` a
real `WritebackService` on loopback. The practice is suspended in its spec, so the service holds
its records (nothing is delivered and no PMS is needed); the records' states are set with the
queue's own operations, as the drainer would set them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.spec import PracticeSpec
from reconciler.cli import main
from reconciler.writeback import store as ops
from reconciler.writeback.model import Status, parse_request
from reconciler.writeback.service import WritebackService
from reconciler.writeback.target import WritebackTarget

TOKEN = "cli-token-0123456789abcdef"


def make_queue(path: Path) -> dict[str, str]:
    """A queue with one sent and two failed writebacks of practice p1; returns their ids."""
    conn = ops.connect(path)
    ids = {}
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for caller in ("sent-1", "failed-1", "failed-2"):
            req = parse_request(
                "p1",
                {"callerId": caller, "type": "outgoingSms", "patientId": "7",
                 "occurredAt": "2026-11-26T09:15:00Z", "text": "hi"},
            )  # fmt: skip
            ops.insert(conn, req, status=Status.PENDING, now=ops.now(), target_type_id="221",
                       provider_id="1")  # fmt: skip
            ops.mark_sending(conn, req.id, now=ops.now())
            if caller.startswith("sent"):
                ops.mark_sent(conn, req.id, "900", now=ops.now())
            else:
                ops.mark_failed(conn, req.id, "PmsRejected", "Open Dental write note: HTTP 400 "
                                "PatNum is invalid", now=ops.now())  # fmt: skip
            ids[caller] = req.id
    conn.close()
    return ids


def test_list_failed_prints_a_table_with_the_reason_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wb.db"
    ids = make_queue(db)
    assert main(["writebacks", "list", "--failed", "--db", str(db)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "PRACTICE", "KIND", "TYPE", "PATIENT", "STATUS", "REASON",
                              "PMS-ID", "ATTEMPTS", "AGE"]  # fmt: skip
    assert out[1].split()[:7] == [ids["failed-1"], "p1", "note", "outgoingSms", "7", "failed",
                                  "PmsRejected"]  # fmt: skip
    assert "PatNum is invalid" in out[2]
    assert ids["sent-1"] not in "\n".join(out)


def test_list_as_json_and_filtered_by_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wb.db"
    ids = make_queue(db)
    assert main(["writebacks", "list", "--status", "sent", "-o", "json", "--db", str(db)]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [(i["id"], i["pmsId"], i["attempts"]) for i in items] == [(ids["sent-1"], "900", 1)]


def test_retry_by_id_and_all_on_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wb.db"
    ids = make_queue(db)
    assert main(["writebacks", "retry", ids["failed-1"], "--db", str(db)]) == 0
    assert f"writeback/{ids['failed-1']} queued for retry" in capsys.readouterr().out
    assert main(["writebacks", "retry", ids["sent-1"], "--db", str(db)]) == 1
    assert "is sent; only failed ones are retried" in capsys.readouterr().err
    assert main(["writebacks", "retry", "--all", "--db", str(db)]) == 0
    assert ids["failed-2"] in capsys.readouterr().out
    assert main(["writebacks", "retry", "--all", "--db", str(db)]) == 1
    conn = ops.connect(db)
    assert ops.counts(conn, "p1") == {"sent": 1, "skipped": 0, "pending": 2, "failed": 0}
    conn.close()


def test_usage_errors_and_a_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["writebacks", "retry", "--db", str(tmp_path / "x.db")]) == 2
    assert "give a writeback ID or --all" in capsys.readouterr().err
    assert main(["writebacks", "list", "--db", str(tmp_path / "x.db")]) == 2
    assert "no writeback queue here" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()  # listing never creates a queue


class Suspended:
    """A directory with one suspended practice: the drainer holds its records."""

    def __init__(self) -> None:
        spec = PracticeSpec.from_spec(
            {"practiceId": "p1", "suspend": True, "providerId": "1",
             "pms": {"type": "OpenDental", "url": "http://127.0.0.1:9",
                     "credentialsSecretRef": {"name": "s"}}}
        )  # fmt: skip
        self.t = WritebackTarget(key="default/p1", spec=spec, provider_id="1")

    def target(self, practice_id: str) -> WritebackTarget | None:
        return self.t if practice_id == "p1" else None


async def test_list_and_retry_through_a_running_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wb.db"
    ids = make_queue(db)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    service = WritebackService(Suspended(), db, TOKEN)
    url = await service.start("127.0.0.1", 0)
    assert url is not None
    server = ["--server", url, "--token-file", str(token_file)]

    def cli(*argv: str) -> Any:
        return asyncio.to_thread(main, ["writebacks", *argv, *server])

    try:
        assert await cli("list", "--failed", "-o", "json") == 1
        failed = json.loads(capsys.readouterr().out)["items"]
        assert [i["id"] for i in failed] == [ids["failed-1"], ids["failed-2"]]
        assert await cli("retry", ids["failed-1"]) == 0
        assert await cli("retry", "wb-unknown") == 1
        assert "no writeback has id wb-unknown" in capsys.readouterr().err
        assert await cli("retry", "--all", "--practice", "p1") == 0
        assert service.counts("p1") == {"sent": 1, "skipped": 0, "pending": 2, "failed": 0}
        token_file.write_text("wrong-token-0123456789\n")
        assert await cli("list") == 2
        assert "HTTP 401" in capsys.readouterr().err
    finally:
        await service.stop()


SECRET_LINES = "first-secret-line-0123456789\nsecond-secret-line-0123456789\n"
BAD_TOKEN_FILES: list[tuple[str, bytes, str]] = [
    ("two lines", SECRET_LINES.encode(), "2 lines"),
    ("a pasted Secret manifest", b"apiVersion: v1\nkind: Secret\ndata:\n  token: c2VjcmV0LXNlY3JldA==\n", "4 lines"),
    ("a space inside", b"first-secret-line 0123456789\n", "character"),
    ("not UTF-8", b"\xff\xfe-secret-line-0123456789\n", "UTF-8"),
    ("a control character", b"first-secret-line\x1b0123456789\n", "character"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "content", "words"), BAD_TOKEN_FILES, ids=[b[0] for b in BAD_TOKEN_FILES]
)
def test_a_bad_token_file_exits_2_naming_the_file_and_never_printing_its_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, content: bytes, words: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    # Nothing listens on port 9 (discard): the token is refused before any connection is tried.
    for argv in (["list"], ["retry", "--all"]):
        code = main(["writebacks", *argv, "--server", "http://127.0.0.1:9",
                     "--token-file", str(token_file)])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 2, (argv, err)
        assert str(token_file) in err and words in err, err
        assert "Traceback" not in err
        for secret in ("secret", "first", "second", "c2Vj", "Secret"):
            assert secret not in out + err.replace(str(token_file), ""), (secret, err)


def test_the_service_refuses_a_token_an_http_header_cannot_carry_without_quoting_it(
    tmp_path: Path,
) -> None:
    from reconciler.writeback.errors import WritebackConfigError

    with pytest.raises(WritebackConfigError) as err:
        WritebackService(Suspended(), tmp_path / "wb.db", SECRET_LINES)
    assert "2 lines" in str(err.value) and "secret" not in str(err.value)


def test_retry_on_the_file_takes_a_record_skipped_for_what_the_pms_said_not_one_the_spec_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "wb.db"
    make_queue(db)
    conn = ops.connect(db)
    ids = {}
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for caller, reason in (
            ("pms-said-no", "ProviderNotVerified"),
            ("spec-said-no", "NotAllowed"),
        ):
            req = parse_request(
                "p1",
                {"callerId": caller, "type": "outgoingSms", "patientId": "7",
                 "occurredAt": "2026-11-26T09:15:00Z", "text": "hi"},
            )  # fmt: skip
            ops.insert(conn, req, status=Status.SKIPPED, now=ops.now(), reason=reason,
                       message="why")  # fmt: skip
            ids[caller] = req.id
    conn.close()
    assert main(["writebacks", "retry", ids["pms-said-no"], "--db", str(db)]) == 0
    assert main(["writebacks", "retry", ids["spec-said-no"], "--db", str(db)]) == 1
    assert "is skipped (NotAllowed); only failed ones are retried" in capsys.readouterr().err
    conn = ops.connect(db)
    record = ops.get(conn, ids["pms-said-no"])
    conn.close()
    # Back in the queue undecided: the drainer decides it again against the PMS.
    assert record is not None and record.status is Status.PENDING
    assert record.reason is None and record.target_type_id is None
