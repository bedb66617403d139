"""The review and operations commands the documents tell a user to run, run as they are written:
every code block marked `<!-- tested in SCENARIO -->` in README.md and docs/*.md.

`tests/test_readme.py` runs the `<!-- tested -->` blocks against a running `pmsctl up`; the blocks
here need something else set up first, named by the marker's SCENARIO:

- `practices`: a fresh copy of the repository's `practices/` (as after a clone);
- `git`: the same folder as a git repository whose `main` (also `origin/main`) holds the examples
  as they are, checked out on a branch whose working tree makes the changes docs/diff.md's sample
  describes (bright-smiles: provider 1 -> 7, outgoing SMS writeback off, appointments every 30s;
  lakeside-dental suspended; a comment in riverside-smiles; a new practice, sunny-hills);
- `catalog`: the same as a git repository, after `pmsctl up --simulate practices --once` wrote
  the practices' catalogs to `.pmsctl/catalogs/`, on a branch with one commit that gives
  lakeside-dental the provider DOC9 (inactive in the PMS) and the outgoing SMS note type
  'Text Msg' (the example of docs/catalog.md);
- `server`: a copy of `practices/`; each command is a server that runs until Ctrl-C: it is
  started, its output read until the shown lines are there (for at most test_readme's WAIT), then
  stopped with SIGINT, and must exit 0. Port 8830 in a command is replaced by a free port (a
  run of digits in the output matches any anyway);
- `fleet` (needs the testenv's `kubectl` as the kustomize renderer): a git repository whose
  `main` holds `examples/fleet/`, checked out on `main`.

Blocks of one scenario in one document share one folder, in document order (a walkthrough's
steps build on each other). Commands and output lines are read and matched by the helpers of
`tests/test_readme.py` (the same three allowances: digits, whitespace runs and `…`). Real:
`pmsctl` as a subprocess of this checkout, git, kubectl kustomize. Nothing is faked.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import test_readme
from test_readme import REPO, Block, free_port, missing, run, until
from test_readme import workdir as workdir  # the folder and environment every scenario starts from

MARKER = re.compile(r"^<!-- tested in (?P<mode>[\w-]+)\s*-->$")
UNTESTED = re.compile(r"^<!-- untested: \S.*-->$")
DOCUMENTS = (
    "README.md",
    "docs/diff.md",
    "docs/catalog.md",
    "docs/fleets.md",
    "docs/versions.md",
    "docs/schema.md",
)
KUBE_DOCUMENTS = {"docs/fleets.md"}


def parse(document: str, scenarios: set[str]) -> list[Block]:
    """The blocks of a document marked for a scenario (test_readme's parser, with this marker)."""
    with (
        mock.patch.object(test_readme, "MARKER", MARKER),
        mock.patch.object(test_readme, "MODES", scenarios),
    ):
        return test_readme.parse(document)


def git(cwd: Path, *args: str) -> None:
    """Run git in `cwd` as a fixed, made-up author (the machine may have none configured)."""
    subprocess.run(
        ["git", "-c", "user.name=pmsctl docs", "-c", "user.email=docs@pmsctl.invalid", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip


def repository(cwd: Path) -> None:
    """Make `cwd` a git repository with everything in it committed on `main` = `origin/main`."""
    git(cwd, "init", "-q", "-b", "main")
    (cwd / ".gitignore").write_text(".venv/\n.pmsctl/\n")
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", "examples")
    git(cwd, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(cwd, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")  # as a clone


def edit(path: Path, *changes: tuple[str, str]) -> None:
    """Replace each `old` text by `new` once; an `old` the file lacks fails the test at once."""
    text = path.read_text(encoding="utf-8")
    for old, new in changes:
        assert old in text, (path, old)
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")


def sample_change(cwd: Path, env: dict[str, str]) -> None:
    """docs/diff.md's sample branch: the examples on main, the branch's changes in the work tree."""
    repository(cwd)
    git(cwd, "checkout", "-q", "-b", "sample-change")
    practices = cwd / "practices"
    bright = practices / "opendental-bright-smiles.yaml"
    edit(
        bright,
        ('providerId: "1"  # ProvNum of Dr. Maria Alvarez (DOC1)', 'providerId: "7"'),
        ("outgoingSms: {allow: true, noteType: Text Message}", "outgoingSms: {allow: false}"),
        ("appointments: {enabled: true, interval: 60s}", "appointments: {enabled: true, interval: 30s}"),
    )  # fmt: skip
    edit(practices / "dentrix-lakeside.yaml", ("suspend: false", "suspend: true"))
    edit(
        practices / "eaglesoft-riverside.yaml",
        ("kind: PracticeWriteback\n", "kind: PracticeWriteback\n# reviewed with the practice\n"),
    )
    sunny = bright.read_text(encoding="utf-8")
    for old, new in (
        ("bright-smiles", "sunny-hills"),
        ("Bright Smiles Family Dentistry", "Sunny Hills Dental"),
        ("outgoingSms: {allow: false}", "outgoingSms: {allow: true, noteType: Text Message}"),
        ("appointments: {enabled: true, interval: 30s}", "appointments: {enabled: true}"),
    ):
        sunny = sunny.replace(old, new)
    (practices / "opendental-sunny-hills.yaml").write_text(sunny, encoding="utf-8")


def catalog_change(cwd: Path, env: dict[str, str]) -> None:
    """pmsctl up's catalogs of the examples, and a commit that breaks two of lakeside-dental's names
    (the provider DOC9, inactive in the PMS; the note type 'Text Msg')."""
    repository(cwd)
    up = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "up", "--simulate", "practices", "--once",
         "--no-writeback"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    git(cwd, "checkout", "-q", "-b", "rename-note-type")
    edit(
        cwd / "practices" / "dentrix-lakeside.yaml",
        ("providerId: DDS1  # Dr. Alan Moss", "providerId: DOC9"),
        ("outgoingSms: {allow: true, noteType: Text Message}", "outgoingSms: {allow: true, noteType: Text Msg}"),
    )  # fmt: skip
    git(cwd, "commit", "-q", "-am", "lakeside-dental: another provider and note type")


def fleet(cwd: Path, env: dict[str, str]) -> None:
    """The example fleet committed on main, and the testenv's kubectl first on PATH."""
    shutil.copytree(REPO / "examples" / "fleet", cwd / "examples" / "fleet")
    repository(cwd)
    kubectl = sorted(Path.home().glob(".cache/pmsctl/testenv/*/kubectl"))
    assert kubectl, "no testenv kubectl: run `make testenv`"
    env["PATH"] = f"{kubectl[-1].parent}:{env['PATH']}"


def serve(command: str, expected: list[str], cwd: Path, env: dict[str, str], where: str) -> None:
    """Run a server command until it has printed the shown lines, then Ctrl-C it."""
    command = command.replace("8830", str(free_port()))
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        until(expected, lambda: [line.rstrip("\n") for line in seen], where)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, f"{where}: exit {proc.returncode} after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)


SCENARIOS: dict[str, Callable[[Path, dict[str, str]], None]] = {
    "practices": lambda cwd, env: None,
    "git": sample_change,
    "server": lambda cwd, env: None,
    "catalog": catalog_change,
    "fleet": fleet,
}


def params() -> list[object]:
    """One case per document, marked `kube` when it needs the testenv binaries."""
    return [
        pytest.param(d, marks=[pytest.mark.kube] if d in KUBE_DOCUMENTS else [], id=d)
        for d in DOCUMENTS
    ]


@pytest.mark.parametrize("document", params())
def test_the_commands_a_document_tells_the_user_to_run_print_what_it_shows(
    document: str, workdir: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base, base_env = workdir
    blocks = parse(document, set(SCENARIOS))
    assert blocks, f"{document} has no block marked `<!-- tested in SCENARIO -->`"
    folders: dict[str, tuple[Path, dict[str, str]]] = {}
    for block in blocks:
        if block.mode not in folders:
            cwd = tmp_path_factory.mktemp(block.mode) / "repo"
            shutil.copytree(base, cwd, symlinks=True)
            env = dict(base_env)
            SCENARIOS[block.mode](cwd, env)
            folders[block.mode] = (cwd, env)
        cwd, env = folders[block.mode]
        for step in block.steps:
            assert step.command, f"{block.where}: output with no command"
            if block.mode == "server":
                serve(step.command, step.expected, cwd, env, block.where)
                continue
            out = run(step.command, cwd, env)
            left = missing(step.expected, out)
            assert not left, f"{block.where}: {left[0]!r} not in:\n" + "\n".join(out)


def test_every_command_block_of_a_document_is_tested_or_says_why_not() -> None:
    """In the documents above, a fenced block of `$ ` commands is either run (by this file or
    test_readme.py) or carries `<!-- untested: REASON -->` on the line before it."""
    unmarked = []
    for document in DOCUMENTS:
        lines = (REPO / document).read_text(encoding="utf-8").splitlines()
        fence = False
        for n, line in enumerate(lines):
            if not line.lstrip().startswith("```"):
                continue
            fence = not fence
            if not fence:
                continue
            body = []
            for text in lines[n + 1 :]:
                if text.lstrip().startswith("```"):
                    break
                body.append(text.strip())
            if not any(text.startswith("$ ") for text in body):
                continue
            before = lines[n - 1].strip()
            if not (
                MARKER.match(before) or test_readme.MARKER.match(before) or UNTESTED.match(before)
            ):
                unmarked.append(f"{document}:{n + 1}")
    assert not unmarked, f"command blocks neither tested nor marked untested: {unmarked}"


def test_a_marker_for_an_unknown_scenario_is_refused(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text("<!-- tested in nowhere -->\n```\n$ true\n```\n")
    with (
        pytest.raises(AssertionError, match="unknown marker mode 'nowhere'"),
        mock.patch.object(test_readme, "REPO", tmp_path),
    ):
        parse("doc.md", set(SCENARIOS))
