"""The documents a new user follows, run as they are written: every code block marked with an
HTML comment `<!-- tested... -->` in README.md and docs/local-mode.md.

Real: `pmsctl up --simulate` as a subprocess in a temporary copy of `practices/` (the test starts
it where a block says to, on a free port that replaces 8081 in the commands), bash running each
`$ ` command in that folder (`pmsctl` and `.venv/bin/pmsctl` run this checkout), curl, the
embedded simulator, SQLite. Nothing is faked.

The markers (the comment is the line just before the block's opening fence):
- `<!-- tested -->`: run each `$ ` command (a line ending in `\\`, or an open quote, continues it) and check the lines
  after it against what it printed (stdout and stderr);
- `<!-- tested: until -->`: the same, rerun until the lines are there (something asynchronous);
- `<!-- tested: up -->`: start `pmsctl up --simulate practices` (the block's command is `make
  run` or `pmsctl up`), stopping one that runs; check its stderr and live table;
- `<!-- tested: table -->`: check the live table of the running `pmsctl up` (until it matches);
- `<!-- tested: stop -->`: Ctrl-C the running `pmsctl up`; check what it says and exit 0.

Every shown output line is checked, in order, against a line of the real output, with three
allowances so the documents can show a real run: a run of digits matches any digits, a run of
spaces any run of whitespace, and `…` anything.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from timing import wait_until

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/local-mode.md")
MARKER = re.compile(r"^<!-- tested(?::\s*(?P<mode>\w+))?\s*-->$")
MODES = {"", "until", "up", "table", "stop"}
UP_COMMANDS = ("make run", "pmsctl up", ".venv/bin/pmsctl up")
WAIT = 30.0


@dataclass
class Step:
    """One `$ ` command of a block and the output lines the document shows under it."""

    command: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    """A marked block: where it is, its mode and its steps (a table block has one, no command)."""

    where: str
    mode: str
    steps: list[Step]


def parse(document: str) -> list[Block]:
    """The marked blocks of a markdown document, in order."""
    lines = (REPO / document).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    for n, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match is None:
            continue
        mode = match.group("mode") or ""
        where = f"{document}:{n + 1}"
        assert mode in MODES, f"{where}: unknown marker mode {mode!r}"
        assert lines[n + 1].startswith("```"), f"{where}: the marker must precede a fence"
        body: list[str] = []
        for text in lines[n + 2 :]:
            if text.startswith("```"):
                break
            body.append(text)
        steps: list[Step] = []
        continued = False
        for text in body:
            if continued:
                steps[-1].command += "\n" + text
            elif text.startswith("$ "):
                steps.append(Step(text[2:]))
            elif steps:
                steps[-1].expected.append(text)
            else:
                steps.append(Step("", [text]))
            continued = bool(steps) and not steps[-1].expected and unfinished(steps[-1].command)
        blocks.append(Block(where, mode, steps))
    return blocks


def unfinished(command: str) -> bool:
    """Whether a command goes on on the next line (a trailing backslash, an open quote)."""
    if command.endswith("\\"):
        return True
    try:
        shlex.split(command)
    except ValueError:
        return True
    return False


def shape(line: str) -> re.Pattern[str]:
    """The pattern a shown output line stands for (see the module docstring)."""
    parts = []
    for token in re.split(r"(…|\d+|\s+)", line.rstrip()):
        if token == "…":
            parts.append(".*")
        elif token.isdigit():
            parts.append(r"\d+")
        elif token and token.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def missing(expected: list[str], actual: list[str]) -> list[str]:
    """The shown lines not found, in order, among the real ones (empty: all found)."""
    at = 0
    for n, line in enumerate(e for e in expected if e.strip()):
        rx = shape(line)
        for i in range(at, len(actual)):
            if rx.fullmatch(actual[i].rstrip()):
                at = i + 1
                break
        else:
            return [e for e in expected if e.strip()][n:]
    return []


class LiveUp:
    """A running `pmsctl up -o table`: its stderr lines and the last frame of its table."""

    def __init__(self, cwd: Path, env: dict[str, str], port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "up", "--simulate", "practices", "-o", "table",
             "--writeback-port", str(port)],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for chunk in iter(lambda: stream.read(1), ""):
            sink.append(chunk)

    def frame(self) -> list[str]:
        """The last complete table the terminal would show (ANSI repaint codes removed)."""
        frames = "".join(self.out).split("\x1b[J")
        if len(frames) < 2:
            return []
        text = re.sub(r"\x1b\[\d*F", "", frames[-2]).replace("\x1b[2K", "")
        return text.splitlines()

    def errors(self) -> list[str]:
        return "".join(self.err).splitlines()

    def screen(self) -> list[str]:
        """What the terminal shows: the notes on stderr, then the table."""
        return self.errors() + self.frame()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        for reader in self.readers:  # a reader ends at end of file: the pipe is drained
            reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh folder as after a clone: practices/, and `pmsctl` (also as .venv/bin/pmsctl)
    running this checkout."""
    shutil.copytree(REPO / "practices", tmp_path / "practices")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "pmsctl"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler.cli "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMSCTL_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200",
               PYTHONUNBUFFERED="1")  # fmt: skip
    yield tmp_path, env


def run(command: str, cwd: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return (done.stdout + done.stderr).splitlines()


def until(expected: list[str], read: Callable[[], list[str]], where: str) -> None:
    """Read the output until every shown line is in it, for at most WAIT seconds."""
    try:
        wait_until(lambda: not missing(expected, read()), WAIT, "the shown lines", step=0.5)
    except AssertionError:
        seen = read()
        shown = "\n".join(seen[-30:])
        left = missing(expected, seen)
        raise AssertionError(
            f"{where}: {left[0] if left else ''!r} not shown within {WAIT}s in:\n{shown}"
        ) from None


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_commands_a_document_tells_the_user_to_run_print_what_it_shows(
    document: str, workdir: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = workdir
    blocks = parse(document)
    assert blocks, f"{document} has no tested block"
    port = free_port()
    live: LiveUp | None = None
    try:
        for block in blocks:
            expected = [line for step in block.steps for line in step.expected]
            if block.mode == "up":
                assert block.steps[0].command.startswith(UP_COMMANDS), block.where
                if live is not None:
                    assert live.stop() == 0
                live = LiveUp(cwd, env, port)
                until(expected, partial(LiveUp.screen, live), block.where)
            elif block.mode == "table":
                assert live is not None, f"{block.where}: no pmsctl up is running"
                until(expected, partial(LiveUp.frame, live), block.where)
            elif block.mode == "stop":
                assert live is not None, f"{block.where}: no pmsctl up is running"
                assert live.stop() == 0
                said = [line for line in expected if line != "^C"]  # what the user types
                assert not missing(said, live.errors()), (block.where, live.errors())
                live = None
            else:
                for step in block.steps:
                    assert step.command, f"{block.where}: output with no command"
                    command = step.command.replace("8081", str(port))
                    read = partial(run, command, cwd, env)
                    if block.mode == "until":
                        until(step.expected, read, block.where)
                    else:
                        out = read()
                        left = missing(step.expected, out)
                        assert not left, f"{block.where}: {left[0]!r} not in:\n" + "\n".join(out)
    finally:
        if live is not None:
            live.kill()


def test_the_shape_rules_let_numbers_vary_and_nothing_else() -> None:
    assert shape("bright-smiles   True   15s (1s ago)   365").fullmatch(
        "bright-smiles      True    15s (12s ago)    1042"
    )
    assert not shape("bright-smiles   True").fullmatch("bright-smiles   False")
    assert shape('{"id":"wb-…","status":"pending"}').fullmatch(
        '{"id":"wb-3f2a","status":"pending"}'
    )
    assert missing(["a", "c"], ["a", "b", "c"]) == []
    assert missing(["c", "a"], ["a", "b", "c"]) == ["a"]
