"""Rotating the writeback token without a restart, on a fake clock.

Real: `BearerTokens` over a real token file in a temporary directory, and, for the API, the
writeback service on loopback (aiohttp, SQLite) with its token file named by
$PMSCTL_WRITEBACK_TOKEN_FILE, as in the cluster. The clock is a plain counter the test moves,
so the re-check interval and the grace period take no real time.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from reconciler.writeback.service import WritebackService
from reconciler.writeback.tokens import BearerTokens

OLD = "old-token-0123456789abcdef"
NEW = "new-token-fedcba9876543210"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def test_a_rotated_token_file_is_picked_up_and_the_old_token_works_for_the_grace_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    path.write_text(OLD + "\n")
    clock = Clock()
    tokens = BearerTokens(OLD, path=str(path), grace=600, recheck=5, clock=clock)
    assert tokens.accepts(bearer(OLD)) and not tokens.accepts(bearer(NEW))

    path.write_text(NEW + "\n")  # the kubelet updates the mounted Secret
    assert not tokens.accepts(bearer(NEW))  # not looked at again before `recheck`
    clock.now += 5
    with caplog.at_level(logging.INFO):
        assert tokens.accepts(bearer(NEW))
    assert tokens.accepts(bearer(OLD))  # clients still switching
    clock.now += 599
    assert tokens.accepts(bearer(OLD))
    clock.now += 2
    assert not tokens.accepts(bearer(OLD)) and tokens.accepts(bearer(NEW))
    assert not tokens.accepts(b"") and not tokens.accepts(bearer(""))
    text = caplog.text
    assert "new token is in use" in text and OLD not in text and NEW not in text


@pytest.mark.parametrize(
    "content",
    ["SECRET-one\nSECRET-two-0123456789\n", "SECRET\n", "SECRET with-space-0123456789\n", ""],
)
def test_a_bad_new_token_file_keeps_the_current_token_and_says_why_without_quoting_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / "token"
    path.write_text(OLD)
    clock = Clock()
    tokens = BearerTokens(OLD, path=str(path), recheck=5, clock=clock)
    path.write_text(content)
    clock.now += 5
    with caplog.at_level(logging.INFO):
        assert tokens.accepts(bearer(OLD))
    if content:
        assert "the current token stays" in caplog.text
    assert "SECRET" not in caplog.text


async def test_the_service_takes_a_rotated_token_from_its_mounted_file_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text(OLD + "\n")
    monkeypatch.setenv("PMSCTL_WRITEBACK_TOKEN_FILE", str(path))

    class Nobody:
        def target(self, practice_id: str) -> None:
            return None

    service = WritebackService(Nobody(), tmp_path / "wb.db", OLD)
    clock = Clock()
    service.api.tokens.clock = clock
    url = await service.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:

            async def status(token: str) -> int:
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(f"{url}/v1/writebacks", headers=headers) as r:
                    return r.status

            assert (await status(OLD), await status(NEW)) == (200, 401)
            path.write_text(NEW + "\n")
            clock.now += 10
            assert (await status(NEW), await status(OLD)) == (200, 200)
            clock.now += 601
            assert (await status(NEW), await status(OLD)) == (200, 401)
    finally:
        await service.stop()
