"""`pmsctl simulate` as a real subprocess: starts, prints its practices, answers, stops on SIGTERM.

Real: the installed `pmsctl` entry point, a loopback port chosen by the OS (--port 0), HTTP with
httpx using the credentials the command printed. The fixture always stops the process.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PMSCTL = str(Path(sys.executable).with_name("pmsctl"))

PRACTICES = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata: {name: bright-smiles-austin}
spec:
  practiceId: bright-smiles-austin
  pms: {type: OpenDental}
---
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata: {name: dentrix-dallas}
spec:
  practiceId: dentrix-dallas
  pms: {type: Dentrix}
"""


@pytest.fixture
def simulate(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    (tmp_path / "practices").mkdir()
    (tmp_path / "practices" / "two.yaml").write_text(PRACTICES)
    proc = subprocess.Popen(
        [PMSCTL, "simulate", "--port", "0", "--practices", str(tmp_path / "practices"),
         "--tick-seconds", "0.2", "--tick-minutes", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                break
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_pmsctl_simulate_prints_practices_answers_with_them_and_stops_cleanly(
    simulate: tuple[subprocess.Popen[str], list[str]],
) -> None:
    proc, lines = simulate
    text = "\n".join(lines)
    assert "made up by the simulator" in text, text
    od = next(line for line in lines if line.startswith("bright-smiles-austin"))
    dx = next(line for line in lines if line.startswith("dentrix-dallas"))
    od_url = re.search(r"(http://\S+/api/v1)", od)
    dev, customer = re.search(r"developerKey=(\S+) customerKey=(\S+)", od).groups()  # type: ignore[union-attr]
    dx_url = re.search(r"(http://\S+/bridge/v1)", dx)
    token = re.search(r"token=(\S+)", dx).group(1)  # type: ignore[union-attr]
    assert od_url and dx_url
    providers = httpx.get(
        f"{od_url.group(1)}/providers", headers={"Authorization": f"ODFHIR {dev}/{customer}"}
    )
    assert providers.status_code == 200 and providers.json()[0]["Abbr"] == "DOC1"
    info = httpx.get(f"{dx_url.group(1)}/info", headers={"Authorization": f"Bearer {token}"}).json()
    assert info["pms"] == "Dentrix"
    assert httpx.get(f"{dx_url.group(1)}/info").status_code == 401
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert proc.stdout is not None and "stopped" in proc.stdout.read()


def test_pmsctl_simulate_names_the_file_and_field_of_a_bad_practice(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: PracticeWriteback\nspec:\n  practiceId: x\n  pms: {type: OpenDentl}\n")
    result = subprocess.run(
        [PMSCTL, "simulate", "--port", "0", "--practices", str(bad)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        f"{bad}: spec.pms.type: 'OpenDentl' is not one of OpenDental, Eaglesoft, Dentrix"
        in result.stderr
    )
