"""Each import-linter contract in pyproject.toml fails when its rule is broken.

`make lint` shows that the code keeps every contract; this module shows that each contract can
fail, so a contract that names the wrong package or a mistyped module cannot pass silently.
Real: the packages and pyproject.toml are copied to a temporary folder, one import that breaks a
contract is added there, and the real `lint-imports` runs on the copy with the same
configuration. The contracts are read from pyproject.toml: a new contract without a case in
`VIOLATIONS` fails `test_every_contract_has_a_violation_case`. `make check-contracts` runs this.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "importlinter"
]
CONTRACTS = [c["name"] for c in CONFIG["contracts"]]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: Contract name -> (file in the copy, the import that breaks the contract). An existing file
#: gets the import appended; a missing one is created (a new module is covered the day it is added).
VIOLATIONS: dict[str, tuple[str, str]] = {
    "Layers: cli > adapters (kube, local) > runtime > stores > engine > writeback > review > api": (
        "reconciler/engine/newmod.py",
        "import reconciler.stores",
    ),
    "Kopf and the Kubernetes client only in reconciler.kube": (
        "reconciler/engine/newmod.py",
        "import kopf",
    ),
    "The engine does no HTTP of its own: no aiohttp, and httpx only in its event sink": (
        "reconciler/engine/newmod.py",
        "import aiohttp",
    ),
    "The pure core does no I/O": (
        "reconciler/engine/core.py",
        "import reconciler.engine.cursors",
    ),
    "The simulator server receives its personalities: it imports no PMS protocol module": (
        "pms_simulator/server.py",
        "import pms_simulator.opendental",
    ),
    "Drivers do not know the engine, the operator or the simulator": (
        "pms_drivers/newmod.py",
        "import reconciler",
    ),
}


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three packages and pyproject.toml, copied; the schemas link is resolved."""
    where = tmp_path_factory.mktemp("layers")
    for package in CONFIG["root_packages"]:
        shutil.copytree(
            ROOT / package,
            where / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    return where


def lint_imports(where: Path) -> tuple[int, dict[str, str]]:
    """Exit code and {contract name: KEPT or BROKEN} of `lint-imports` run in `where`."""
    # A wide terminal, so that no contract name is wrapped in the report.
    env = {**os.environ, "PYTHONPATH": str(where), "COLUMNS": "1000"}
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "pyproject.toml"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    verdicts: dict[str, str] = {}
    for name in CONTRACTS:
        # The report pads short names with a space and runs long ones into the verdict.
        found = re.search(rf"^{re.escape(name)} ?(KEPT|BROKEN)\b", proc.stdout, re.MULTILINE)
        if found:
            verdicts[name] = found[1]
    return proc.returncode, verdicts


def test_every_contract_has_a_violation_case() -> None:
    assert CONTRACTS, "no import-linter contracts in pyproject.toml"
    assert sorted(VIOLATIONS) == sorted(CONTRACTS)


def test_the_unchanged_copy_keeps_every_contract(copy: Path) -> None:
    code, verdicts = lint_imports(copy)
    assert verdicts == dict.fromkeys(CONTRACTS, "KEPT")
    assert code == 0


@pytest.mark.parametrize("contract", CONTRACTS)
def test_a_violating_import_breaks_the_contract(copy: Path, contract: str) -> None:
    assert contract in VIOLATIONS, f"add a violation case for the contract {contract!r}"
    relative, statement = VIOLATIONS[contract]
    target = copy / relative
    before = target.read_text(encoding="utf-8") if target.exists() else None
    target.write_text(
        (before if before is not None else '"""A module that breaks a contract."""\n')
        + f"\n{statement}  # the violation under test\n",
        encoding="utf-8",
    )
    try:
        code, verdicts = lint_imports(copy)
    finally:
        if before is None:
            target.unlink()
        else:
            target.write_text(before, encoding="utf-8")
    assert verdicts.get(contract) == "BROKEN", verdicts
    assert code != 0
