"""The CI recipe and the pre-commit hook this repository publishes actually work.

Real: `check-jsonschema` with its vendored GitHub workflow schema checks the example workflow;
the workflow's diff step is run by bash exactly as written, in a real git clone (an `origin`
remote, a pull request branch), with the `GITHUB_OUTPUT`/`GITHUB_STEP_SUMMARY` files GitHub
would provide; the hook's `entry` from `.pre-commit-hooks.yaml` runs as pre-commit would (the
entry plus the matching file names). Not covered: GitHub itself (the comment-posting step runs
only there) and the `pre-commit` program (not a dependency of this project).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from test_diff_git import AUSTIN, ELPASO, commit_all, git, sub, write

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "docs" / "ci" / "github-workflow.yaml"
HOOKS = REPO / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent


def test_the_example_workflow_is_a_valid_github_workflow():
    done = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOW],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _diff_step() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["validate-and-diff"]["steps"]
    return next(s for s in steps if s.get("id") == "diff")


def _run_step(step: dict, cwd: Path, tmp: Path, base_ref: str) -> tuple[int, str, str]:
    output, summary = tmp / "github_output", tmp / "step_summary"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "BASE_REF": f"origin/{base_ref}",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=env, timeout=60)
    return done.returncode, output.read_text(), summary.read_text()


def _pull_request_clone(tmp_path: Path) -> Path:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    write(upstream, {"practices/austin.yaml": AUSTIN, "practices/elpaso.yaml": ELPASO})
    commit_all(upstream, "practices")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream), str(clone))
    git(clone, "checkout", "-q", "-b", "pr")
    return clone


def test_the_workflow_diff_step_renders_the_comment_and_passes_on_changes(tmp_path):
    clone = _pull_request_clone(tmp_path)
    write(clone, {"practices/austin.yaml": sub("interval: 60s", "interval: 30s")})
    commit_all(clone, "poll faster")
    code, output, summary = _run_step(_diff_step(), clone, tmp_path, "main")
    assert code == 0
    assert output == "exit=1\n"
    body = (clone / "pmsctl-diff.md").read_text()
    assert body.startswith("<!-- pmsctl-diff -->")
    assert "appointments poll interval 60s -> 30s (2x PMS read load)" in body
    assert summary == body


def test_the_workflow_diff_step_fails_the_job_on_invalid_files(tmp_path):
    clone = _pull_request_clone(tmp_path)
    write(clone, {"practices/austin.yaml": sub('providerId: "7"', "providerId: seven")})
    commit_all(clone, "typo")
    code, output, _ = _run_step(_diff_step(), clone, tmp_path, "main")
    assert code == 2
    assert output == "exit=2\n"


def _hook_run(files: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    hook = next(h for h in yaml.safe_load(HOOKS.read_text()) if h["id"] == "pmsctl-validate")
    pattern = re.compile(hook["files"])
    picked = [str(f.relative_to(cwd)) for f in files if pattern.search(str(f.relative_to(cwd)))]
    argv = shlex.split(hook["entry"]) + picked
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_pre_commit_hook_passes_valid_files_and_fails_invalid_ones(tmp_path):
    good = tmp_path / "practices" / "austin.yaml"
    bad = tmp_path / "clusters" / "practices" / "elpaso.yaml"
    write(tmp_path, {"practices/austin.yaml": AUSTIN})
    assert _hook_run([good], tmp_path).returncode == 0
    write(
        tmp_path,
        {"clusters/practices/elpaso.yaml": ELPASO.replace("interval: 15s", "interval: 2s")},
    )
    failed = _hook_run([good, bad], tmp_path)
    assert failed.returncode == 1
    assert "clusters/practices/elpaso.yaml:" in failed.stdout
    assert "spec.sync.appointmentStatus.interval" in failed.stdout
