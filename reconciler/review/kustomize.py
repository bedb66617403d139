"""Render a kustomize folder at a git ref or in the working tree, with origin annotations.

Real tools, no network: the renderer is `kustomize build` or `kubectl kustomize` (the command
named by `--kustomize-command` or `$PMSCTL_KUSTOMIZE`, else the first of `kustomize` and
`kubectl` on PATH; `KustomizeError` says so when there is none). A git ref is materialised by git
into a temporary folder (through a temporary index: the work tree and the repository's index are
not touched); the working tree is rendered where it is. Both sides render at the same time.

The folder is rendered through a wrapper kustomization in a temporary folder that lists it as
its only resource and asks for `buildMetadata: [originAnnotations, transformerAnnotations]`,
so every rendered object says which file it came from (`config.kubernetes.io/origin`) and
which kustomizations patched it (`alpha.config.kubernetes.io/transformations`) without
changing the user's files. `Rendered` keeps the folder paths needed to turn the paths in those
annotations, and in kustomize's error messages, back into repository-relative paths.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.api.stream import StreamDocument

#: Names the kustomize command (split like a shell would): `kustomize build`, `kubectl kustomize`.
ENV_COMMAND = "PMSCTL_KUSTOMIZE"
#: Seconds one render may take; a fleet of 10,000 overlays renders in well under a minute.
RENDER_TIMEOUT_S = 600.0

_WRAPPER = (
    "# written by pmsctl diff: renders {target} with origin annotations\n"
    "apiVersion: kustomize.config.k8s.io/v1beta1\n"
    "kind: Kustomization\n"
    "buildMetadata: [originAnnotations, transformerAnnotations]\n"
    "resources:\n"
    "  - {target}\n"
)


class KustomizeError(Exception):
    """No renderer, a render that failed, or a ref that cannot be materialised; the message
    says which, with kustomize's own error (its paths made repository-relative)."""


@dataclass(frozen=True)
class Renderer:
    """The command that renders a folder: `argv + [folder]`."""

    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return " ".join(self.argv)


def find_renderer(command: str | None = None) -> Renderer:
    """The renderer to use: `command` (e.g. `"kustomize build"` or a path to `kubectl`), else
    `$PMSCTL_KUSTOMIZE`, else `kustomize build` or `kubectl kustomize` from PATH."""
    named = command or os.environ.get(ENV_COMMAND)
    if named:
        argv = shlex.split(named)
        if not argv:
            raise KustomizeError("the kustomize command is empty")
        exe = shutil.which(argv[0])
        if exe is None:
            raise KustomizeError(f"kustomize command {argv[0]!r} not found")
        if len(argv) == 1:
            # A bare program: `kubectl` renders with `kubectl kustomize`, anything else is
            # taken to be kustomize itself.
            sub = "kustomize" if Path(argv[0]).name.startswith("kubectl") else "build"
            argv.append(sub)
        return Renderer((exe, *argv[1:]))
    for name, sub in (("kustomize", "build"), ("kubectl", "kustomize")):
        exe = shutil.which(name)
        if exe is not None:
            return Renderer((exe, sub))
    raise KustomizeError(
        "neither kustomize nor kubectl is on PATH; install one, or name the command with "
        f"--kustomize-command or ${ENV_COMMAND} (e.g. 'kubectl kustomize')"
    )


@dataclass(frozen=True)
class Rendered:
    """One render: the multi-document YAML `text`, the seconds it took, and how to turn the
    paths kustomize printed (relative to `wrapper`) into repository-relative ones."""

    text: str
    seconds: float
    wrapper: Path
    tree: Path
    label: str
    #: The tree's root as kustomize prints it in annotations (relative to the wrapper), `/`-ended.
    prefix: str = ""

    def normalised_text(self) -> str:
        """`text` with the annotations' paths made repository-relative (the wrapper's place
        differs between the sides; with it gone, an unchanged object reads the same on both)."""
        if not self.prefix:
            return self.text
        text = self.text.replace(f"path: {self.prefix}", "path: ")
        return text.replace(f"configuredIn: {self.prefix}", "configuredIn: ")

    def repo_path(self, printed: str) -> str:
        """A path from an annotation (relative to the wrapper) or an absolute path inside the
        rendered tree, as a repository-relative path (unchanged when it is outside)."""
        full = Path(os.path.normpath(self.wrapper / printed))
        try:
            return full.relative_to(self.tree).as_posix()
        except ValueError:
            return printed

    def clean_message(self, message: str) -> str:
        """kustomize's error text with the temporary folders left out of its paths."""
        for folder in (self.wrapper, self.tree):
            for form in (str(folder.resolve()), str(folder)):
                message = message.replace(form + os.sep, "").replace(form, ".")
        return message


def _wrap(tree: Path, folder: str, label: str, scratch: Path) -> tuple[Path, str]:
    target = tree / folder
    if not (target.is_dir() and any((target / n).is_file() for n in _KUSTOMIZATION_NAMES)):
        raise KustomizeError(f"{folder}: no kustomization.yaml there at {label}")
    wrapper = Path(tempfile.mkdtemp(prefix="wrap-", dir=scratch))
    relative = os.path.relpath(target, wrapper)
    (wrapper / "kustomization.yaml").write_text(_WRAPPER.format(target=relative))
    return wrapper, relative


def render_all(
    renderer: Renderer, jobs: Sequence[tuple[Path, str, str]], scratch: Path
) -> list[Rendered]:
    """Render each (tree, folder, label) through a wrapper kustomization written under
    `scratch`; the renders run at the same time (kustomize is single-threaded)."""
    started = time.perf_counter()
    running = []
    for tree, folder, label in jobs:
        wrapper, relative = _wrap(tree, folder, label, scratch)
        out = (scratch / f"{wrapper.name}.out").open("w+b")
        err = (scratch / f"{wrapper.name}.err").open("w+b")
        try:
            proc = subprocess.Popen([*renderer.argv, str(wrapper)], stdout=out, stderr=err)
        except OSError as exc:
            raise KustomizeError(f"cannot run {renderer.label}: {exc.strerror or exc}") from exc
        running.append((proc, out, err, wrapper, relative, tree, folder, label))
    results: list[Rendered] = []
    failures: list[str] = []
    for proc, out, err, wrapper, relative, tree, folder, label in running:
        try:
            code = proc.wait(timeout=max(RENDER_TIMEOUT_S - (time.perf_counter() - started), 1))
        except subprocess.TimeoutExpired as exc:
            for other in running:
                other[0].kill()
            raise KustomizeError(
                f"{renderer.label} {folder} took over {RENDER_TIMEOUT_S:g}s"
            ) from exc
        seconds = time.perf_counter() - started
        with out, err:
            out.seek(0)
            err.seek(0)
            text = out.read().decode("utf-8", "replace")
            message = err.read().decode("utf-8", "replace").strip()
        prefix = os.path.relpath(tree, wrapper).replace(os.sep, "/") + "/"
        rendered = Rendered(text, seconds, wrapper, tree.resolve(), label, prefix)
        if code != 0:
            message = message.replace(f"'{relative}'", f"'{folder}'")
            message = rendered.clean_message(message) or "no output"
            failures.append(f"{renderer.label} {folder} failed at {label}: {message}")
        results.append(rendered)
    if failures:
        raise KustomizeError("\n".join(failures))
    return results


def render(renderer: Renderer, tree: Path, folder: str, label: str, scratch: Path) -> Rendered:
    """Render `tree/folder` through a wrapper kustomization written under `scratch`."""
    [rendered] = render_all(renderer, [(tree, folder, label)], scratch)
    return rendered


_KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def _git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, check=False, env=env
        )
    except FileNotFoundError as exc:
        raise KustomizeError("git is not installed or not on PATH") from exc
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KustomizeError(f"git {args[0]} failed: {err[-1] if err else 'no output'}")
    return done.stdout


def materialise(repo: Path, commit: str, scratch: Path) -> Path:
    """The tree of `commit` written into a new folder under `scratch` by git itself (a
    temporary index: `git read-tree` then `git checkout-index`), without touching the work
    tree or the repository's own index."""
    folder = Path(tempfile.mkdtemp(prefix="tree-", dir=scratch))
    env = {**os.environ, "GIT_INDEX_FILE": str(folder) + ".index"}
    _git(repo, "read-tree", commit, env=env)
    _git(repo, "checkout-index", "--all", f"--prefix={folder}/", env=env)
    return folder


@dataclass(frozen=True)
class RenderedSides:
    """Both renders of a `pmsctl diff --kustomize`."""

    base: Rendered
    head: Rendered
    #: Wall seconds of both renders, which run at the same time.
    seconds: float
    #: Wall seconds spent writing the refs' trees before rendering.
    checkout_seconds: float = 0.0


def render_sides(
    renderer: Renderer,
    repo: Path,
    folder: str,
    base: tuple[str, str],
    head: tuple[str, str] | None,
    scratch: Path,
) -> RenderedSides:
    """Render `folder` (repository-relative) at the base (label, commit) and at the head
    (label, commit), or in the working tree when `head` is None."""
    written = time.perf_counter()
    base_tree = materialise(repo, base[1], scratch)
    head_tree = repo if head is None else materialise(repo, head[1], scratch)
    written = time.perf_counter() - written
    head_label = "working tree" if head is None else head[0]
    started = time.perf_counter()
    base_render, head_render = render_all(
        renderer, [(base_tree, folder, base[0]), (head_tree, folder, head_label)], scratch
    )
    return RenderedSides(base_render, head_render, time.perf_counter() - started, written)


def overlay_mentions(
    documents: Mapping[str, StreamDocument], tree: Path, folder: str
) -> Callable[[str, str], bool]:
    """For "kept by a local override": `answer(key, setting_key)` is True when one of the
    kustomizations that patched practice `key` (its transformer annotation, repository-relative
    paths under `tree`), other than `folder`'s own, has a YAML file next to it that contains
    `setting_key`. A practice without the annotation answers True (origin and value decide)."""
    root = {f"{folder}/{n}" for n in _KUSTOMIZATION_NAMES}
    seen: dict[tuple[str, str], bool] = {}

    def answer(key: str, setting: str) -> bool:
        doc = documents.get(key)
        if doc is None or not doc.configured_in:
            return doc is not None
        for path in doc.configured_in:
            if path in root:
                continue
            found = seen.get((path, setting))
            if found is None:
                found = seen[(path, setting)] = _folder_mentions(tree / path, setting)
            if found:
                return True
        return False

    return answer


def _folder_mentions(kustomization: Path, key: str) -> bool:
    """True when a YAML file next to `kustomization` (itself included) contains `key`."""
    try:
        files = [f for f in kustomization.parent.iterdir() if f.suffix in (".yaml", ".yml")]
        return any(key in f.read_text(encoding="utf-8", errors="replace") for f in files)
    except OSError:
        return False
