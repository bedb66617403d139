"""Runs mypy (strict) on `tests/typing_drivers.py`: every registered driver satisfies `PmsDriver`.

Real: the project's own mypy on the real modules. The negative case writes a driver with a wrong
signature to a temporary file next to the check and asserts mypy rejects it, so the check can
fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pms_drivers.base import Credentials, PmsDriver
from pms_drivers.registry import DRIVERS, create_driver

ROOT = Path(__file__).resolve().parent.parent
MYPY = [
    sys.executable,
    "-m",
    "mypy",
    "--strict",
    "--no-error-summary",
    "--no-incremental",
    "--cache-dir=/dev/null",
]


def _mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MYPY, *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_registered_driver_satisfies_the_protocol_for_mypy() -> None:
    result = _mypy(ROOT / "tests" / "typing_drivers.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_driver_with_a_drifted_signature_is_rejected_by_mypy(tmp_path: Path) -> None:
    bad = tmp_path / "bad_driver.py"
    bad.write_text(
        "from pms_drivers.base import PmsDriver, Credentials\n"
        "from pms_drivers.opendental import OpenDentalDriver\n"
        "class Drifted(OpenDentalDriver):\n"
        "    async def list_providers(self, extra: int) -> list[str]:  # type: ignore[override]\n"
        "        return []\n"
        "def check(client: object, creds: Credentials) -> None:\n"
        "    _: PmsDriver = Drifted(client, 'x', creds)  # type: ignore[arg-type]\n"
    )
    result = _mypy(bad)
    assert result.returncode != 0
    assert "PmsDriver" in result.stdout


async def test_the_registry_covers_the_three_pms_types_and_each_is_a_runtime_driver() -> None:
    assert set(DRIVERS) == {"OpenDental", "Eaglesoft", "Dentrix"}
    creds = Credentials({"developerKey": "d", "customerKey": "c", "token": "t"})
    async with httpx.AsyncClient() as client:
        for pms_type in DRIVERS:
            driver = create_driver(pms_type, client, "http://127.0.0.1:1", creds)
            assert isinstance(driver, PmsDriver)
            assert driver.pms == pms_type


async def test_an_unknown_pms_type_names_the_known_ones() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(
            ValueError, match="'OpenDentl' has no driver; expected one of OpenDental"
        ):
            create_driver("OpenDentl", client, "http://x", Credentials({}))
