"""`pmsctl version`: the version, the commit (from $PMSCTL_GIT_COMMIT as the image sets it, from
git in a checkout, unknown elsewhere) and the served API versions, which match the CRD's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler import __version__
from reconciler.cli import build_parser, main
from reconciler.cli.version import COMMIT_ENV, git_commit, schema_versions

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "version", *args],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_json_names_the_version_the_image_commit_and_the_served_versions() -> None:
    out = json.loads(_run("-o", "json", env={COMMIT_ENV: "0123abcd"}).stdout)
    assert out["version"] == __version__
    assert out["gitCommit"] == "0123abcd" and out["gitDescribe"] is None
    assert out["api"]["group"] == "writeback.dental.dev"
    assert out["api"]["kind"] == "PracticeWriteback"
    assert out["api"]["preferredVersion"] == "writeback.dental.dev/v1"
    assert out["api"]["servedVersions"] == ["v1alpha1", "v1"]
    assert out["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")


def test_text_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(COMMIT_ENV, "feedface")
    assert main(["version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"pmsctl {__version__}"
    assert "commit:  feedface" in lines[1]
    assert lines[3].endswith("served versions: v1alpha1, v1")


def test_in_a_checkout_the_commit_comes_from_git() -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != COMMIT_ENV}
    commit, describe = git_commit(env)
    assert commit == head
    assert (describe is not None and describe.startswith(head[:7])) or "-g" in (describe or "")
    # "unknown" (the image's default build argument) means: not set.
    assert git_commit({COMMIT_ENV: "unknown"})[0] == head


def test_outside_a_checkout_without_the_variable_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_commit({}, checkout=tmp_path) == (None, None)
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", "import json, reconciler.cli.version as v; "
             "print(json.dumps(v.git_commit({}, checkout=__import__('pathlib').Path('.'))))"],
            capture_output=True, text=True, cwd=tmp_path, check=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ).stdout
    )  # fmt: skip
    assert out == [None, None]


def test_served_versions_are_the_crds() -> None:
    crd = yaml.safe_load(
        (REPO / "crds" / "writeback.dental.dev_practicewritebacks.yaml").read_text()
    )
    served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    assert schema_versions() == served


def test_version_is_a_listed_subcommand() -> None:
    help_text = build_parser().format_help()
    assert "version" in help_text


def test_the_sbom_tool_describes_pmsctl_and_its_dependencies(tmp_path: Path) -> None:
    # `make sbom` runs the same command on a throwaway environment holding only the runtime
    # dependencies; here it runs on the test environment, which holds them too.
    out = tmp_path / "sbom.json"
    subprocess.run(
        [str(Path(sys.executable).with_name("cyclonedx-py")), "environment",
         "--pyproject", str(REPO / "pyproject.toml"), "--output-reproducible",
         "--of", "JSON", "-o", str(out), sys.executable],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    bom = json.loads(out.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("pmsctl", __version__)
    names = {c["name"].lower() for c in bom["components"]}
    assert {"kopf", "kubernetes", "httpx", "aiohttp", "jsonschema", "prometheus-client"} <= {
        n.replace("_", "-") for n in names
    }
