"""What several benchmarks share: a quiet `git` for the repositories they generate, the wall
and CPU time of a command run as a subprocess (the CPU of its own children included), the
machine's CPU pressure, and loading a script or the tests' PostgreSQL server by file path.

A benchmark that is itself loaded by file path (from a test or another benchmark) puts this
folder on `sys.path` before it imports this module."""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    """`git -C repo ARGS` with a fixed author and no global configuration, output captured."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def children_cpu() -> float:
    """CPU seconds used so far by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: Sequence[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of the command and its children, the run)."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, children_cpu() - cpu, done


def cpu_pressure_us() -> int:
    """Microseconds some task waited for a CPU, machine-wide (Linux PSI; 0 where unavailable)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return 0


def load_module(path: Path, name: str) -> ModuleType:
    """The Python file at `path` as module `name` (registered in `sys.modules`, which its
    dataclasses need to find their module)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def tests_pg() -> ModuleType:
    """tests/pg.py, the PostgreSQL server the tests start from Debian's binaries (tests/ goes
    on `sys.path`: it imports its sibling timing.py)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return load_module(ROOT / "tests" / "pg.py", "pmsctl_tests_pg")
