"""The container image recipe: the Dockerfile passes hadolint and has the shape platform teams
expect (pinned slim base, wheels built in a first stage, non-root numeric user, `pmsctl` behind
an entrypoint that sets umask 077, OCI labels), the build context leaves local state out, and
`make image` says plainly why it cannot build where no builder can run."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "image" / "entrypoint.sh"
BUILD = REPO / "deploy" / "image" / "build.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_an_exact_slim_python_release() -> None:
    args = dict(a.split("=", 1) for w, a in _instructions() if w == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    froms = [a for w, a in _instructions() if w == "FROM"]
    assert len(froms) == 2, "two stages: wheels, then the runtime"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_runtime_stage_installs_only_the_built_wheels_and_no_compiler() -> None:
    final = _final_stage()
    runs = " ".join(a for w, a in final if w == "RUN")
    assert "--no-index" in runs and "--find-links=/wheels" in runs
    assert "from=wheels" in runs
    for tool in ("gcc", "build-essential", "apt-get install", "make "):
        assert tool not in runs, tool


def test_runtime_runs_as_a_numeric_non_root_user_behind_the_umask_entrypoint() -> None:
    final = _final_stage()
    users = [a for w, a in final if w == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    assert ("ENTRYPOINT", '["/usr/local/bin/pmsctl-entrypoint"]') in final
    assert ("CMD", '["operator"]') in final
    labels = " ".join(a for w, a in final if w == "LABEL")
    for key in ("source", "version", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'licenses="Apache-2.0"' in labels


def test_entrypoint_sets_umask_077_and_hands_over_every_argument(tmp_path: Path) -> None:
    # The entrypoint is the unit here: a `pmsctl` on PATH that reports what it was given.
    fake = tmp_path / "pmsctl"
    fake.write_text('#!/bin/sh\necho "umask=$(umask) args=$*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "operator", "--selector", "shard=a"],
        capture_output=True, text=True, env=env, check=True,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert result.stdout.strip() == "umask=0077 args=operator --selector shard=a"
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


def test_build_context_leaves_out_local_state() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default, then allow what the Dockerfile copies"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in _instructions():
        if word == "COPY" and "--from" not in args:
            copied.update(p.rstrip("/") for p in args.split()[:-1] if not p.startswith("--"))
    assert copied <= allowed, copied - allowed
    assert "**/*.db" in lines


def _run_build(path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock",
        "GIT_COMMIT": "abc123",
    }
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(BUILD)], capture_output=True, text=True, env=env)


def _path_with(tmp_path: Path, *tools: str) -> str:
    """A PATH holding the basic utilities the script uses plus the named real tools only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("awk", "git", "grep", "tail", "timeout", "dirname", "cat", *tools):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_make_image_explains_why_when_no_builder_is_installed(tmp_path: Path) -> None:
    result = _run_build(_path_with(tmp_path), tmp_path)
    assert result.returncode == 1
    for builder in ("docker", "podman", "buildah"):
        assert f"{builder}: not installed" in result.stderr
    assert "no container builder can run on this machine" in result.stderr
    assert "ghcr.io/dental-dev/pmsctl:0.1.0" in result.stderr


def test_make_image_skips_a_docker_client_without_a_daemon(tmp_path: Path) -> None:
    path = _path_with(tmp_path)
    # A docker client with no daemon behind it answers `docker info` like this (and so does
    # the real client on this machine); a podman that cannot set up user namespaces likewise.
    docker = Path(path) / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        'echo "Cannot connect to the Docker daemon at $DOCKER_HOST. '
        'Is the docker daemon running?" >&2\nexit 1\n'
    )
    docker.chmod(0o755)
    result = _run_build(path, tmp_path)
    assert result.returncode == 1
    assert "docker: installed but cannot run: Cannot connect to the Docker daemon" in result.stderr
    assert "podman: not installed" in result.stderr


def test_make_image_uses_the_first_builder_that_runs(tmp_path: Path) -> None:
    path = _path_with(tmp_path)
    log = tmp_path / "calls"
    podman = Path(path) / "podman"
    podman.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    podman.chmod(0o755)
    result = _run_build(path, tmp_path)
    assert result.returncode == 0, result.stderr
    info, build = log.read_text().splitlines()
    assert info == "info"
    assert build.startswith("build --build-arg VERSION=0.1.0 --build-arg GIT_COMMIT=abc123 ")
    assert f"-t ghcr.io/dental-dev/pmsctl:0.1.0 -f {REPO}/Dockerfile {REPO}" in build
