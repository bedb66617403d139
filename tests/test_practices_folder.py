"""The practices folder `pmsctl up` and `pmsctl validate` read: a file that becomes unreadable,
symlinks that lead nowhere, and a second file claiming a running practice are each reported as
a problem of that file, and the running practice keeps its last good version.

Real: files, symlinks and permissions in temporary folders, the real `FolderWatcher` and planner,
and `pmsctl validate` as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.local.folder import FolderWatcher
from reconciler.local.plan import plan

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "practices" / "opendental-bright-smiles.yaml"
NOBODY = 65534


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder another user may enter (tmp_path's parents are the owner's only)."""
    folder = Path(tempfile.mkdtemp(prefix="pmsctl-folder-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _child_scans(folder: Path, ready_w: int, go_r: int, out_w: int) -> None:
    """In the forked child, as `nobody`: scan, wait for the parent's chmod, plan, scan again."""
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    watcher = FolderWatcher(folder)
    first, _ = watcher.scan()
    applied = plan({}, first).applied
    os.write(ready_w, json.dumps({"first": {p: r.problems for p, r in first.items()}}).encode())
    os.read(go_r, 1)
    second, changed = watcher.scan()
    after = plan(applied, second)
    os.write(
        out_w,
        json.dumps(
            {
                "changed": changed,
                "problems": {p: list(v) for p, v in after.problems.items()},
                "apply": [a.practice.key for a in after.apply],
                "remove": list(after.remove),
                "kept": {k: a.practice.path for k, a in after.applied.items()},
            }
        ).encode(),
    )


def test_a_file_made_unreadable_while_running_is_reported_and_keeps_running(
    open_folder: Path,
) -> None:
    """Root reads a chmod 000 file anyway, so the watcher runs in a forked child that switched
    to `nobody` (os.setuid) before its first scan: for it the chmod is real. The parent (root)
    makes the change between the child's two scans, as a user would while `pmsctl up` runs.
    The tests run as root (the only way to switch users)."""
    practice = open_folder / "bright.yaml"
    shutil.copy(EXAMPLE, practice)
    practice.chmod(0o644)
    # The same scan in this process first: the child (as nobody) cannot import modules or read
    # the schema files from this checkout, so they are loaded and cached before the fork.
    plan({}, FolderWatcher(open_folder).scan()[0])
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            _child_scans(open_folder, ready_w, go_r, out_w)
            code = 0
        finally:
            os._exit(code)
    for fd in (ready_w, go_r, out_w):  # a child that fails closes the pipes: no hang
        os.close(fd)
    try:
        first = json.loads(os.read(ready_r, 1 << 16))
        assert first["first"] == {str(practice): []}
        practice.chmod(0o000)
        os.write(go_w, b"x")
        result = json.loads(os.read(out_r, 1 << 16))
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result["changed"] is True
    [problem] = result["problems"][str(practice)]
    assert "cannot read" in problem and "Permission denied" in problem
    # The last good version keeps running: nothing applied or removed, the key stays on its file.
    assert result["apply"] == [] and result["remove"] == []
    assert result["kept"] == {"dental-practices/bright-smiles": str(practice)}


def _links(folder: Path) -> None:
    shutil.copy(EXAMPLE, folder / "bright.yaml")
    (folder / "dangling.yaml").symlink_to("moved-away.yaml")
    (folder / "loop.yaml").symlink_to("loop2.yaml")
    (folder / "loop2.yaml").symlink_to("loop.yaml")
    (folder / "team").symlink_to("/nonexistent/team-folder")


def test_pmsctl_validate_reports_dangling_and_looping_symlinks(tmp_path: Path) -> None:
    _links(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert (
        f"{tmp_path / 'dangling.yaml'}:1:1: <file>: symlink to moved-away.yaml, which does not exist"
        in out
    )
    assert f"{tmp_path / 'loop.yaml'}:1:1: <file>: symlink to loop2.yaml, which loops" in out
    assert f"{tmp_path / 'loop2.yaml'}:1:1: <file>: symlink to loop.yaml, which loops" in out
    assert f"{tmp_path / 'team'}:1:1: <file>: symlink to /nonexistent/team-folder" in out
    assert "all valid" not in out


def test_pmsctl_validate_reports_a_folder_of_only_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").symlink_to("gone.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "symlink to gone.yaml, which does not exist" in result.stdout + result.stderr


def test_pmsctl_up_reports_each_broken_symlink_as_a_problem_of_that_link(tmp_path: Path) -> None:
    _links(tmp_path)
    watcher = FolderWatcher(tmp_path)
    files, changed = watcher.scan()
    assert changed
    problems = plan({}, files).problems
    names = {Path(p).name: v for p, v in problems.items()}
    assert set(names) == {"dangling.yaml", "loop.yaml", "loop2.yaml", "team"}
    assert "symlink to moved-away.yaml, which does not exist" in names["dangling.yaml"][0]
    assert "symlink to loop2.yaml, which loops" in names["loop.yaml"][0]
    assert files[next(p for p in files if p.endswith("bright.yaml"))].valid
    # Reported on every scan, without counting as a change once reported.
    again, changed = watcher.scan()
    assert not changed and plan({}, again).problems == problems
    # Fixed: the link now leads to a file, which is read like any other.
    (tmp_path / "moved-away.yaml").write_text("not: [valid\n")
    fixed, changed = watcher.scan()
    assert changed
    dangling = next(p for p in fixed if p.endswith("dangling.yaml"))
    assert "symlink" not in " ".join(fixed[dangling].problems)


def _practice_file(path: Path, display_name: str) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["displayName"] = display_name
    path.write_text(yaml.safe_dump(doc))


def test_a_new_file_sorting_earlier_does_not_take_over_a_running_practice(
    tmp_path: Path,
) -> None:
    _practice_file(tmp_path / "m-bright.yaml", "The running one")
    watcher = FolderWatcher(tmp_path)
    first, _ = watcher.scan()
    running = plan({}, first)
    key = "dental-practices/bright-smiles"
    assert [a.practice.key for a in running.apply] == [key]
    _practice_file(tmp_path / "a-copy.yaml", "The newcomer")  # sorts first
    second, _ = watcher.scan()
    after = plan(running.applied, second)
    assert after.apply == () and after.remove == ()
    kept = after.applied[key].practice
    assert kept.path.endswith("m-bright.yaml") and kept.spec.display_name == "The running one"
    [problem] = after.problems[next(p for p in second if p.endswith("a-copy.yaml"))]
    assert "is also defined in" in problem and "m-bright.yaml" in problem
    assert "not applied" in problem
    # Once the running file lets the practice go, the other file's copy takes over.
    (tmp_path / "m-bright.yaml").unlink()
    third, _ = watcher.scan()
    moved = plan(after.applied, third)
    assert moved.applied[key].practice.path.endswith("a-copy.yaml")
    assert moved.problems == {}
