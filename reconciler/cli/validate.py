"""`pmsctl validate PATH...`: check practice files before they reach a cluster.

Files and folders (recursive `*.yaml`/`*.yml`, multi-document), or `-` for a multi-document
stream on stdin (`kubectl kustomize DIR | pmsctl validate -`). One line per problem,
`file:line:col: path: message`, then a one-line summary; for stdin the file is `<stdin>`, the
line is the stream's, and the line ends with the document (index, kind, namespace/name, and the
source file from kustomize's origin annotation when the render has one). Output formats: text (default), json,
github (workflow annotations). Exit codes: 0 valid, 1 invalid, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the `validate` subcommand."""
    p = sub.add_parser(
        "validate",
        help="check PracticeWriteback files against the schema (exit 0 valid, 1 invalid, 2 usage)",
        description="Check PracticeWriteback files and folders (recursive *.yaml/*.yml, multi-document).",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="files or folders, or - to read a multi-document stream from stdin",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "github"),
        default="text",
        help="output format (default text)",
    )
    p.add_argument(
        "--skip-other-kinds",
        action="store_true",
        help="skip documents of other kinds (Secrets, ConfigMaps, ...) with a note instead of an error",
    )
    p.set_defaults(func=run)


def _github_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def run(args: argparse.Namespace) -> int:
    """Validate, print in the chosen format, return the exit code."""
    from reconciler.api.validate import UsageError, validate_paths, validate_stream

    try:
        if "-" in args.paths:
            if len(args.paths) > 1:
                raise UsageError("- (stdin) cannot be combined with other paths")
            report = validate_stream(sys.stdin.read(), skip_other_kinds=args.skip_other_kinds)
        else:
            report = validate_paths(args.paths, skip_other_kinds=args.skip_other_kinds)
    except UsageError as exc:
        print(f"pmsctl validate: {exc}", file=sys.stderr)
        return 2
    files, docs, problems = len(report.files), len(report.documents), len(report.problems)
    summary = (
        f"{files} file(s), {docs} valid PracticeWriteback document(s)"
        + (f", {len(report.skipped)} skipped" if report.skipped else "")
        + (f", {problems} problem(s)" if problems else ": all valid")
    )
    out = sys.stdout
    if args.output == "json":
        json.dump(
            {
                "valid": report.ok,
                "files": files,
                "documents": [
                    {"file": d.file, "line": d.line, "namespace": d.namespace, "name": d.name}
                    for d in report.documents
                ],
                "problems": [p.as_dict() for p in report.problems],
                "skipped": [
                    {"file": s.file, "line": s.line, "kind": s.kind, "apiVersion": s.api_version}
                    for s in report.skipped
                ],
            },
            out,
            indent=2,
        )
        out.write("\n")
    elif args.output == "github":
        for p in report.problems:
            out.write(
                f"::error file={_github_escape(p.file, prop=True)},line={p.line},col={p.col},"
                f"title={_github_escape(p.path, prop=True)}::{_github_escape(p.path + ': ' + p.message)}\n"
            )
        for s in report.skipped:
            out.write(
                f"::notice file={_github_escape(s.file, prop=True)},line={s.line}::{_github_escape(str(s))}\n"
            )
        out.write(summary + "\n")
    else:
        out.writelines(f"{p}\n" for p in report.problems)
        out.writelines(f"note: {s}\n" for s in report.skipped)
        out.write(summary + "\n")
    return 0 if report.ok else 1
