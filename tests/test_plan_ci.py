"""The CI recipe's plan step and the `pmsctl-plan` pre-commit hook work with an exported catalog.

Real: the workflow's plan step run by bash exactly as written, in a real git clone (an `origin`
remote, a pull request branch), with the catalog artifact where the download step puts it and the
`GITHUB_STEP_SUMMARY` file GitHub would provide; the hook's `entry` from `.pre-commit-hooks.yaml`
plus its documented `args` and the matching file names, as pre-commit runs it. No cluster, no PMS:
that is the point. Not covered: GitHub itself (the artifact download runs only there).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from test_diff_git import AUSTIN, commit_all, git, sub, write

from reconciler.api.catalog import (
    Catalog,
    CatalogDocumentCategory,
    CatalogNoteType,
    CatalogProvider,
    DocumentUse,
    dump_catalog_list,
)

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "docs" / "ci" / "github-workflow.yaml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent

AUSTIN_CATALOG = Catalog(
    namespace="dental",
    name="bright-smiles-austin",
    practice_id="bright-smiles-austin",
    pms_type="OpenDental",
    read_at="2999-01-01T00:00:00Z",  # never stale, whenever the test runs
    providers=(CatalogProvider("7", "Dr. Lee", True),),
    note_types=(CatalogNoteType("224", "Text Message"), CatalogNoteType("225", "Missed Call")),
    document_categories=(
        CatalogDocumentCategory(
            "187", "Insurance Verification", False, (DocumentUse.WRITE, DocumentUse.READ)
        ),
    ),
)


def _plan_step() -> dict[str, Any]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["validate-and-diff"]["steps"]
    return next(s for s in steps if s.get("name") == "Plan against the catalogs")


def _clone_with_artifact(tmp_path: Path) -> Path:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    write(upstream, {"practices/austin.yaml": AUSTIN})
    commit_all(upstream, "practices")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    git(clone, "checkout", "-q", "-b", "pr")
    (clone / ".catalogs").mkdir()
    (clone / ".catalogs" / "catalogs.json").write_text(
        dump_catalog_list([AUSTIN_CATALOG.to_object()])
    )
    return clone


def _run_step(clone: Path, tmp: Path) -> tuple[int, str]:
    summary = tmp / "step_summary"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BASE_REF": "origin/main",
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    done = subprocess.run(["bash", "-e", "-c", _plan_step()["run"]], cwd=clone, env=env, timeout=60)
    return done.returncode, summary.read_text()


def test_the_workflow_plan_step_fails_the_job_on_a_misspelled_note_type(tmp_path: Path) -> None:
    clone = _clone_with_artifact(tmp_path)
    write(clone, {"practices/austin.yaml": sub("noteType: Text Message", "noteType: Text Msg")})
    commit_all(clone, "typo")
    code, summary = _run_step(clone, tmp_path)
    assert code == 1
    assert summary.startswith("<!-- pmsctl-plan -->")
    assert "'Text Msg' not found; closest: 'Text Message'" in summary


def test_the_workflow_plan_step_passes_a_change_whose_names_resolve(tmp_path: Path) -> None:
    clone = _clone_with_artifact(tmp_path)
    write(clone, {"practices/austin.yaml": sub("interval: 60s", "interval: 30s")})
    commit_all(clone, "poll faster")
    code, summary = _run_step(clone, tmp_path)
    assert code == 0
    assert "every name resolves" in summary


def _hook_run(files: list[Path], cwd: Path, catalogs: Path) -> subprocess.CompletedProcess[str]:
    hook = next(h for h in yaml.safe_load(HOOKS.read_text()) if h["id"] == "pmsctl-plan")
    pattern = re.compile(hook["files"])
    picked = [str(f.relative_to(cwd)) for f in files if pattern.search(str(f.relative_to(cwd)))]
    argv = [*shlex.split(hook["entry"]), "--catalogs", str(catalogs), *picked]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_plan_hook_fails_a_commit_naming_an_inactive_provider(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo, {"practices/austin.yaml": AUSTIN})
    commit_all(repo, "practices")
    catalog = json.loads(json.dumps(AUSTIN_CATALOG.to_object()))
    catalog["providers"].append({"id": "9", "name": "Dr. Gone", "active": False})
    catalogs = repo / "catalogs.json"
    catalogs.write_text(dump_catalog_list([catalog]))
    path = repo / "practices" / "austin.yaml"
    assert _hook_run([path], repo, catalogs).returncode == 0
    write(repo, {"practices/austin.yaml": sub('providerId: "7"', 'providerId: "9"')})
    failed = _hook_run([path], repo, catalogs)
    assert failed.returncode == 1
    assert "provider '9' (Dr. Gone) is inactive in the PMS" in failed.stdout
