"""`pmsctl version`: what is running, for bug reports and release checks.

Prints the pmsctl version, the git commit it was built from, the Python version, and the
PracticeWriteback API versions this build serves (one per schema file it ships). The commit
comes from $PMSCTL_GIT_COMMIT (the image sets it at build time), else from `git` when pmsctl
runs from a checkout, else it is unknown. `-o json` prints the same as one JSON object.
Exit code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

#: The environment variable the image's build sets to the commit it was built from.
COMMIT_ENV = "PMSCTL_GIT_COMMIT"
_SCHEMA_FILE = re.compile(r"^practicewriteback\.(v\d+(?:(?:alpha|beta)\d+)?)\.schema\.json$")


def register(sub: Any) -> None:
    """Add the `version` subcommand."""
    p = sub.add_parser(
        "version",
        help="print the version, git commit and served API versions",
        description="Print the pmsctl version, the git commit it was built from, and the "
        "PracticeWriteback API versions it serves.",
    )
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def schema_versions() -> list[str]:
    """The PracticeWriteback versions this build ships a schema for, oldest first."""
    folder = resources.files("reconciler.api").joinpath("schemas")
    found = [m.group(1) for e in folder.iterdir() if (m := _SCHEMA_FILE.match(e.name))]
    return sorted(found, key=_version_key)


def _version_key(version: str) -> tuple[int, int, int]:
    # Kubernetes ordering: v1alpha1 < v1beta1 < v1 < v2alpha1.
    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    assert m is not None
    stage = {"alpha": 0, "beta": 1, None: 2}[m.group(2)]
    return int(m.group(1)), stage, int(m.group(3) or 0)


def git_commit(
    env: Mapping[str, str] | None = None, checkout: Path | None = None
) -> tuple[str | None, str | None]:
    """(commit, `git describe`) of this build: from $PMSCTL_GIT_COMMIT when set (no describe),
    else from git when `checkout` (default: the folder holding the package) is a git checkout,
    else (None, None)."""
    env = os.environ if env is None else env
    from_env = env.get(COMMIT_ENV, "").strip()
    if from_env and from_env != "unknown":
        return from_env, None
    root = checkout if checkout is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (done.stdout.strip() or None) if done.returncode == 0 else None

    return git("rev-parse", "HEAD"), git("describe", "--tags", "--always", "--dirty")


def info(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What `pmsctl version -o json` prints."""
    from reconciler import GROUP, KIND, __version__

    commit, describe = git_commit(env)
    versions = schema_versions()
    return {
        "version": __version__,
        "gitCommit": commit,
        "gitDescribe": describe,
        "python": platform.python_version(),
        "api": {
            "group": GROUP,
            "kind": KIND,
            "servedVersions": versions,
            "preferredVersion": f"{GROUP}/{versions[-1]}",  # the newest: the storage version
        },
    }


def run(args: argparse.Namespace) -> int:
    """Print the version information in the chosen format."""
    data = info()
    if args.output == "json":
        print(json.dumps(data, indent=2))
        return 0
    commit = data["gitCommit"] or "unknown"
    if data["gitDescribe"]:
        commit += f" ({data['gitDescribe']})"
    api = data["api"]
    print(f"pmsctl {data['version']}")
    print(f"  commit:  {commit}")
    print(f"  python:  {data['python']}")
    print(
        f"  api:     {api['kind']} {api['group']}, served versions: {', '.join(api['servedVersions'])}"
    )
    return 0
