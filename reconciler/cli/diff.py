"""`pmsctl diff`: what a change to practice files does, against a git ref or the live cluster.

    pmsctl diff [--base REF] [--head REF] [PATH...]     files at REF (default: the merge base
                                                         with the default branch) -> working tree
    pmsctl diff --live [--kubeconfig F] [PATH...|-]     objects in the cluster -> files (or a
                                                         rendered stream on stdin)
    pmsctl diff --kustomize DIR [BASE..HEAD]           DIR rendered by kustomize at BASE and at
                                                         HEAD (default: merge base -> working
                                                         tree), changes grouped across practices

Both sides go through `pmsctl validate`'s validator (`reconciler.api.validate.validate_text`), so an
invalid file is reported with the same `file:line:col: path: message` lines, never a traceback.
Identical file contents are parsed once (keyed by git blob id), which halves the work when most
files did not change. Exit codes follow `kubectl diff`: 0 no change, 1 changes, 2 errors.

The live side reads the cluster through `reconciler.kube.client.list_practice_writebacks` (this module
never imports the `kubernetes` client); the renderer is the same pure `reconciler.review.diff` as for git.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.review.diff import RENDERERS, Resource, diff_practices
from reconciler.review.gitsource import (
    GitSourceError,
    SourceFile,
    default_base,
    pathspecs,
    read_ref,
    read_worktree,
    repo_root,
    rev_parse,
)

if TYPE_CHECKING:
    from reconciler.api.validate import Problem, ValidDocument

DEFAULT_PATH = "practices"
#: Seconds one request to the API server may take before `--live` gives up.
LIVE_TIMEOUT_S = 15


class DiffInputError(Exception):
    """A side could not be read or is invalid; `lines` are what to print, one problem each."""

    def __init__(self, headline: str, lines: Sequence[str] = ()) -> None:
        super().__init__(headline)
        self.headline = headline
        self.lines = list(lines)


def register(sub: Any) -> None:
    """Add `pmsctl diff` to the CLI."""
    p = sub.add_parser(
        "diff",
        help="show what a change to practice files does (vs a git ref, or the live cluster)",
        description=(
            "Compare PracticeWriteback resources by identity (namespace/name) and say what "
            "changes: writeback enabled or disabled, providers, poll intervals with their PMS "
            "load, suspensions, added/removed/moved practices, with risky changes flagged. "
            "Exit codes: 0 no change, 1 changes, 2 errors (invalid files included)."
        ),
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"files or folders to compare (default: {DEFAULT_PATH}/ at the repository root); "
        "with --live, - reads a multi-document stream from stdin (kubectl kustomize DIR | ...)",
    )
    p.add_argument(
        "--base",
        metavar="REF",
        help="git ref to compare with (default: merge base of HEAD with the default branch)",
    )
    p.add_argument(
        "--head",
        metavar="REF",
        help="compare with the files at this git ref instead of the working tree",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="compare the files with the objects in the cluster (what kubectl apply would change)",
    )
    p.add_argument("--kubeconfig", metavar="FILE", help="with --live: kubeconfig file")
    p.add_argument("--context", metavar="NAME", help="with --live: kubeconfig context")
    p.add_argument(
        "--prune",
        action="store_true",
        help="with --live: also report cluster objects that no file defines (as removed)",
    )
    p.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="namespace of documents without metadata.namespace "
        "(default: the context's namespace with --live, else 'default')",
    )
    p.add_argument(
        "--kustomize",
        metavar="DIR",
        help="render DIR with kustomize at both refs (a BASE..HEAD range as the only PATH, or "
        "--base/--head) and report the changes grouped across practices",
    )
    p.add_argument(
        "--kustomize-command",
        metavar="CMD",
        help="with --kustomize: the renderer, e.g. 'kustomize build' or 'kubectl kustomize' "
        "(default: $PMSCTL_KUSTOMIZE, else kustomize or kubectl from PATH)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=sorted(RENDERERS),
        default="text",
        help="output format; markdown is a pull request comment body",
    )
    p.set_defaults(func=run)


# --- files -> resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    documents: list[ValidDocument]
    problems: list[Problem]


def _metadata(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def load_side(
    files: Iterable[SourceFile],
    label: str,
    namespace: str,
    cache: dict[str, _Parsed] | None = None,
) -> dict[str, Resource]:
    """Validate `files` and index their PracticeWritebacks by `namespace/name`.

    Documents of other kinds are skipped (as `pmsctl up` does). `cache` maps git blob ids to
    validator results and may be shared between the two sides, so a file that did not change
    is parsed once. Raises DiffInputError listing every problem, including a namespace/name or
    a practiceId used twice across files.
    """
    from reconciler.api.validate import validate_text

    cache = {} if cache is None else cache
    resources: dict[str, Resource] = {}
    practice_ids: dict[str, Resource] = {}
    problems: list[str] = []
    for f in files:
        parsed = cache.get(f.blob)
        if parsed is None or (parsed.problems and parsed.problems[0].file != f.path):
            documents, found = validate_text(f.text, f.path, skip_other_kinds=True)
            parsed = _Parsed(documents, found)
            cache[f.blob] = parsed
        problems += [str(p) for p in parsed.problems]
        for doc in parsed.documents:
            resource = Resource(
                doc.namespace or namespace, doc.name, doc.spec(), file=f.path, line=doc.line
            )
            other = resources.get(resource.key)
            if other is not None:
                line, col = doc.position(("metadata", "name"))
                problems.append(
                    f"{f.path}:{line}:{col}: metadata.name: {resource.key} is also defined at "
                    f"{other.file}:{other.line}"
                )
                continue
            twin = practice_ids.get(resource.spec.practice_id)
            if twin is not None:
                line, col = doc.position(("spec", "practiceId"))
                problems.append(
                    f"{f.path}:{line}:{col}: spec.practiceId: practiceId "
                    f"{resource.spec.practice_id!r} is also used at {twin.file}:{twin.line}"
                )
                continue
            resources[resource.key] = resource
            practice_ids[resource.spec.practice_id] = resource
    if problems:
        raise DiffInputError(f"invalid files at {label}:", problems)
    return resources


# --- sides ---------------------------------------------------------------------------------------


def _paths(args: argparse.Namespace, repo: Path | None) -> list[Path]:
    if args.paths:
        return [Path(p) for p in args.paths]
    return [(repo or Path.cwd()) / DEFAULT_PATH]


@dataclass(frozen=True)
class Sides:
    """What `run` diffs: both sides, their labels, and how many practices sit in files that
    are byte-identical on both sides (not parsed; see `git_sides`)."""

    base: dict[str, Resource]
    head: dict[str, Resource]
    base_label: str
    head_label: str
    identical: int = 0


#: Counts the PracticeWriteback documents of a file that is not parsed (identical on both sides).
_KIND_LINE = re.compile(r"^kind:[ \t]*[\"']?PracticeWriteback\b", re.MULTILINE)


def _load_both(
    base_files: list[SourceFile],
    head_files: list[SourceFile],
    labels: tuple[str, str],
    namespace: str,
    cache: dict[str, _Parsed],
) -> tuple[dict[str, Resource], dict[str, Resource]]:
    errors: list[DiffInputError] = []
    sides: list[dict[str, Resource]] = []
    for files, label in ((base_files, labels[0]), (head_files, labels[1])):
        try:
            sides.append(load_side(files, label, namespace, cache))
        except DiffInputError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise DiffInputError(
            errors[0].headline, [*errors[0].lines, errors[1].headline, *errors[1].lines]
        )
    return sides[0], sides[1]


def _identity_needles(base: Mapping[str, Resource], head: Mapping[str, Resource]) -> set[str]:
    """Names and practice ids whose identity could clash with a file that was not parsed:
    those of one-sided resources and changed practice ids."""
    needles: set[str] = set()
    for key in base.keys() ^ head.keys():
        r = base.get(key) or head[key]
        needles.update((r.name, r.spec.practice_id))
    for key in base.keys() & head.keys():
        if base[key].spec.practice_id != head[key].spec.practice_id:
            needles.update((base[key].spec.practice_id, head[key].spec.practice_id))
    return needles


def git_sides(args: argparse.Namespace) -> Sides:
    """Both sides of a git diff.

    Speed: a file with the same path and the same blob id on both sides cannot change
    anything, so it is not parsed, only counted (its `kind: PracticeWriteback` lines). It is
    parsed after all when it mentions the name or practice id of a resource that exists on one
    side only, or of a changed practice id, so a clash of identities is still caught. A file
    that is invalid on both sides and unchanged is left to `pmsctl validate`.
    """
    cwd = Path.cwd()
    repo = repo_root(Path(args.paths[0]) if args.paths else cwd)
    paths = _paths(args, repo)
    specs = pathspecs(repo, paths)
    if args.base:
        base_commit = rev_parse(repo, args.base)
        base_label = f"{args.base} ({base_commit[:10]})"
    else:
        name, base_commit = default_base(repo)
        base_label = f"{name} ({base_commit[:10]})"
    if args.head:
        head_commit = rev_parse(repo, args.head)
        head_label = f"{args.head} ({head_commit[:10]})"
        head_files = read_ref(repo, head_commit, specs)
    else:
        head_label = "working tree"
        head_files = read_worktree(repo, paths)
    base_files = read_ref(repo, base_commit, specs)
    namespace = args.namespace or "default"

    base_blobs = {f.path: f.blob for f in base_files}
    same = {f.path: f for f in head_files if base_blobs.get(f.path) == f.blob}
    base_files = [f for f in base_files if f.path not in same]
    head_files = [f for f in head_files if f.path not in same]
    cache: dict[str, _Parsed] = {}
    labels = (base_label, head_label)
    base, head = _load_both(base_files, head_files, labels, namespace, cache)
    needles = _identity_needles(base, head)
    involved = [f for f in same.values() if any(n in f.text for n in needles)] if needles else []
    if involved:
        base, head = _load_both(
            base_files + involved, head_files + involved, labels, namespace, cache
        )
    picked = {f.path for f in involved}
    identical = sum(
        len(_KIND_LINE.findall(f.text)) for path, f in same.items() if path not in picked
    )
    return Sides(base, head, base_label, head_label, identical)


def read_live(
    namespaces: Iterable[str],
    *,
    kubeconfig: str | None,
    context: str | None,
) -> tuple[dict[str, Resource], str]:
    """The PracticeWritebacks in `namespaces` of the cluster (read by `reconciler.kube.client`), and
    a label naming the context."""
    from reconciler.api.spec import PracticeSpec
    from reconciler.kube.client import KubeReadError, list_practice_writebacks

    try:
        live = list_practice_writebacks(
            namespaces, kubeconfig=kubeconfig, context=context, timeout_s=LIVE_TIMEOUT_S
        )
    except KubeReadError as exc:
        raise DiffInputError(str(exc)) from exc
    resources: dict[str, Resource] = {}
    problems: list[str] = []
    for obj in live.items:
        meta = _metadata(obj)
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        key = f"{namespace}/{name}"
        try:
            spec = PracticeSpec.from_resource(obj)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{key}: the live object's spec cannot be read: {exc!r}")
            continue
        resources[key] = Resource(namespace, name, spec)
    if problems:
        raise DiffInputError(f"invalid objects in {live.label}:", problems)
    return resources, live.label


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from reconciler.kube.client import KubeReadError, context_namespace

    try:
        return context_namespace(kubeconfig, context)
    except KubeReadError as exc:
        raise DiffInputError(str(exc)) from exc


def live_sides(args: argparse.Namespace) -> Sides:
    """The cluster (base) and the files (head) for `--live`."""
    namespace = args.namespace or _context_namespace(args.kubeconfig, args.context)
    head_label = "files"
    if args.paths and "-" in args.paths:
        if len(args.paths) > 1:
            raise DiffInputError("- (stdin) cannot be combined with other paths")
        head, head_label = _stdin_side(namespace), "stdin"
    else:
        first = Path(args.paths[0]) if args.paths else Path.cwd()
        try:
            repo = repo_root(first)
        except GitSourceError:
            repo = (first if first.is_dir() else first.parent).resolve()
        head = load_side(read_worktree(repo, _paths(args, repo)), "files", namespace)
    namespaces = {r.namespace for r in head.values()} or {namespace}
    live, label = read_live(namespaces, kubeconfig=args.kubeconfig, context=args.context)
    if not args.prune:
        # kubectl apply leaves objects that no file names alone.
        live = {k: v for k, v in live.items() if k in head}
    return Sides(live, head, label, head_label)


def _stdin_side(namespace: str) -> dict[str, Resource]:
    """The PracticeWritebacks of a multi-document stream on stdin (`kubectl kustomize DIR |
    pmsctl diff --live -`), problems reported with the stream's lines and documents."""
    from reconciler.review.rendered import StreamInvalid, load_stream

    try:
        return load_stream(sys.stdin.read(), namespace=namespace).resources
    except StreamInvalid as exc:
        raise DiffInputError("invalid documents on stdin:", exc.lines) from exc


def _range(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(base, head) refs from `BASE..HEAD` (either side may be empty) or --base/--head."""
    if not args.paths:
        return args.base, args.head
    if len(args.paths) > 1 or ".." not in args.paths[0] or args.base or args.head:
        raise DiffInputError(
            "with --kustomize DIR, the only argument is a BASE..HEAD range "
            "(or use --base/--head); DIR names what to render"
        )
    base, _, head = args.paths[0].partition("..")
    return base or None, head or None


def kustomize_run(args: argparse.Namespace) -> int:
    """`pmsctl diff --kustomize DIR`: render, diff, group, print; the exit code."""
    import tempfile

    from reconciler.review.grouped import RENDERERS as GROUPED
    from reconciler.review.grouped import group_report
    from reconciler.review.kustomize import (
        KustomizeError,
        find_renderer,
        overlay_mentions,
        render_sides,
    )
    from reconciler.review.rendered import StreamCache, StreamInvalid, load_stream

    base_ref, head_ref = _range(args)
    renderer = find_renderer(args.kustomize_command)
    folder = Path(args.kustomize)
    if not folder.is_dir():
        raise KustomizeError(f"{folder}: no such folder")
    repo = repo_root(folder)
    relative = folder.resolve().relative_to(repo.resolve()).as_posix()
    if base_ref:
        base = (f"{base_ref} ({rev_parse(repo, base_ref)[:10]})", rev_parse(repo, base_ref))
    else:
        name, commit = default_base(repo)
        base = (f"{name} ({commit[:10]})", commit)
    head = None
    if head_ref:
        head = (f"{head_ref} ({rev_parse(repo, head_ref)[:10]})", rev_parse(repo, head_ref))
    namespace = args.namespace or "default"
    with tempfile.TemporaryDirectory(prefix="pmsctl-diff-") as scratch:
        sides = render_sides(renderer, repo, relative, base, head, Path(scratch))
        loaded = []
        errors: list[str] = []
        cache = StreamCache()
        for rendered in (sides.base, sides.head):
            try:
                loaded.append(
                    load_stream(
                        rendered.normalised_text(),
                        name=f"{rendered.label}:{relative}",
                        namespace=namespace,
                        source_path=rendered.repo_path,
                        cache=cache,
                    )
                )
            except StreamInvalid as exc:
                errors += [f"invalid render at {rendered.label}:", *exc.lines]
        if errors:
            raise DiffInputError(errors[0].rstrip(":"), errors[1:])
        report = diff_practices(
            loaded[0].resources,
            loaded[1].resources,
            base_label=sides.base.label,
            head_label=sides.head.label,
        )
        overrides = overlay_mentions(loaded[1].documents, sides.head.tree, relative)
        grouped = group_report(
            report, loaded[0].resources, loaded[1].resources, overrides=overrides
        )
        sys.stdout.write(GROUPED[args.output](grouped))
        print(
            f"rendered with {renderer.label}: {sides.base.label} {sides.base.seconds:.2f}s, "
            f"{sides.head.label} {sides.head.seconds:.2f}s (at the same time: {sides.seconds:.2f}s); "
            f"trees written in {sides.checkout_seconds:.2f}s",
            file=sys.stderr,
        )
    return 1 if report.has_changes else 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `pmsctl diff`."""
    if args.kustomize:
        from reconciler.review.kustomize import KustomizeError

        if args.live:
            print("pmsctl diff: --kustomize renders git refs; drop --live", file=sys.stderr)
            return 2
        try:
            return kustomize_run(args)
        except DiffInputError as exc:
            print(f"pmsctl diff: {exc.headline}", file=sys.stderr)
            for line in exc.lines:
                print(line, file=sys.stderr)
            return 2
        except (GitSourceError, KustomizeError) as exc:
            print(f"pmsctl diff: {exc}", file=sys.stderr)
            return 2
    if args.kustomize_command:
        print("pmsctl diff: --kustomize-command needs --kustomize", file=sys.stderr)
        return 2
    if "-" in args.paths and not args.live:
        print(
            "pmsctl diff: - (a stream on stdin) is compared with the cluster: add --live "
            "(for two git refs of a kustomize folder use --kustomize DIR)",
            file=sys.stderr,
        )
        return 2
    if args.live and (args.base or args.head):
        print(
            "pmsctl diff: --live compares files with the cluster; drop --base/--head",
            file=sys.stderr,
        )
        return 2
    if not args.live and (args.prune or args.kubeconfig or args.context):
        print("pmsctl diff: --prune, --kubeconfig and --context need --live", file=sys.stderr)
        return 2
    try:
        sides = live_sides(args) if args.live else git_sides(args)
    except DiffInputError as exc:
        print(f"pmsctl diff: {exc.headline}", file=sys.stderr)
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    except GitSourceError as exc:
        print(f"pmsctl diff: {exc}", file=sys.stderr)
        return 2
    report = diff_practices(
        sides.base,
        sides.head,
        base_label=sides.base_label,
        head_label=sides.head_label,
        identical=sides.identical,
    )
    sys.stdout.write(RENDERERS[args.output](report))
    return 1 if report.has_changes else 0
