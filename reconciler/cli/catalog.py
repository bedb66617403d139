"""`pmsctl catalog`: what each practice's PMS offers (providers, note types, document categories).

    pmsctl catalog get PRACTICE [-n NS] [-o table|json|yaml]    one practice's catalog
    pmsctl catalog export -o FILE [-n NS]                       every catalog into one file

Catalogs come from the cluster (PracticeCatalog objects the operator publishes, read with the
kubeconfig through `reconciler.kube.catalog`), from `pmsctl up`'s state folder (`--state-dir`),
or from an exported file (`--catalogs`). The export is a PracticeCatalogList (JSON, or YAML when
FILE ends in .yaml/.yml) that a CI job keeps as an artifact for `pmsctl plan --catalogs`: it holds
no credential. Exit codes: 0 done, 1 no such catalog, 2 usage and read errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.api.catalog import (
    Catalog,
    CatalogIndex,
    catalog_key,
    catalog_list,
    dump_catalog_list,
)


class CatalogSourceError(Exception):
    """The catalogs could not be read; the message names the source and the cause."""


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """--catalogs / --state-dir / --kubeconfig / --context: where catalogs come from."""
    g = p.add_argument_group("catalog source (default: the cluster of the current kubeconfig)")
    g.add_argument("--catalogs", metavar="FILE", help="an exported catalog file (catalog export)")
    g.add_argument("--state-dir", metavar="DIR", help="pmsctl up's state folder (.pmsctl)")
    g.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file")
    g.add_argument("--context", metavar="NAME", help="kubeconfig context")


def register(sub: Any) -> None:
    """Add `pmsctl catalog get|export` to the CLI."""
    p = sub.add_parser(
        "catalog",
        help="show or export what each practice's PMS offers (providers, note types, documents)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=type(p))
    get = verbs.add_parser("get", help="one practice's catalog")
    get.add_argument("practice", metavar="PRACTICE", help="NAME or NAMESPACE/NAME")
    get.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="namespace of PRACTICE (default: the context's in the cluster; any in files)",
    )
    get.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    add_source_arguments(get)
    get.set_defaults(func=run_get)
    export = verbs.add_parser("export", help="every catalog into one file (a CI artifact)")
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="file to write")
    export.add_argument("-n", "--namespace", metavar="NS", action="append", help="only this NS")
    add_source_arguments(export)
    export.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def read_file(path: Path) -> Mapping[str, Mapping[str, Any]]:
    """The PracticeCatalog objects of an exported file (JSON or YAML), by namespace/name,
    each parsed when first looked up (`CatalogIndex`)."""
    try:
        return CatalogIndex.from_text(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatalogSourceError(f"{path}: cannot read catalogs: {exc}") from exc


def load_catalogs(
    args: argparse.Namespace, namespaces: Iterable[str] | None = None
) -> tuple[Mapping[str, Mapping[str, Any]], str]:
    """(PracticeCatalog objects by namespace/name, a label naming the source) from the source
    the flags name; `namespaces` narrows a cluster read (None: every namespace)."""
    if sum(bool(x) for x in (args.catalogs, args.state_dir, args.kubeconfig or args.context)) > 1:
        raise CatalogSourceError(
            "use one catalog source: --catalogs, --state-dir or --kubeconfig/--context"
        )
    if args.catalogs:
        return read_file(Path(args.catalogs)), f"file {args.catalogs}"
    if args.state_dir:
        from reconciler.local.catalogs import CATALOG_FOLDER, read_catalog_folder

        folder = Path(args.state_dir) / CATALOG_FOLDER
        try:
            return read_catalog_folder(folder), f"folder {folder}"
        except ValueError as exc:
            raise CatalogSourceError(str(exc)) from exc
    from reconciler.kube.catalog import read_catalogs
    from reconciler.kube.client import KubeReadError

    try:
        found = read_catalogs(namespaces, kubeconfig=args.kubeconfig, context=args.context)
    except KubeReadError as exc:
        raise CatalogSourceError(str(exc)) from exc
    return found, f"cluster{' ' + args.context if args.context else ''}"


def _portable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without cluster bookkeeping (uid, managedFields, ownerReferences, ...)."""
    meta = obj.get("metadata") or {}
    out = dict(obj)
    out["metadata"] = {"namespace": meta.get("namespace"), "name": meta.get("name")}
    return out


def _age(read_at: str) -> str:
    try:
        then = datetime.fromisoformat(read_at.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def render_table(c: Catalog) -> str:
    """kubectl-style: a header line, then one row per entry."""
    version = f" {c.pms_version}" if c.pms_version else ""
    lines = [f"{c.key}: {c.pms_type}{version}, read {_age(c.read_at)} ago ({c.read_at})", ""]
    rows = [("KIND", "ID", "NAME", "STATE")]
    rows += [("provider", p.id, p.name, "active" if p.active else "inactive") for p in c.providers]
    rows += [("noteType", t.id, t.name, "hidden" if t.hidden else "visible") for t in c.note_types]
    rows += [
        (
            "documentCategory",
            d.id,
            d.name,
            "hidden" if d.hidden else ",".join(str(u) for u in d.uses),
        )
        for d in c.document_categories
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append("   ".join(r[i].ljust(widths[i]) for i in range(3)) + "   " + r[3])
    return "\n".join(lines) + "\n"


def _fail(message: str, code: int = 2) -> int:
    print(f"pmsctl catalog: {message}", file=sys.stderr)
    return code


def run_get(args: argparse.Namespace) -> int:
    """`pmsctl catalog get`."""
    import yaml

    namespace, _, name = args.practice.rpartition("/")
    namespace = namespace or args.namespace
    try:
        if not namespace and not (args.catalogs or args.state_dir):
            # As kubectl does: the context's namespace (files are searched by name instead).
            from reconciler.kube.client import KubeReadError, context_namespace

            try:
                namespace = context_namespace(args.kubeconfig, args.context)
            except KubeReadError as exc:
                raise CatalogSourceError(str(exc)) from exc
        found = load_catalogs(args, [namespace] if namespace else None)
    except CatalogSourceError as exc:
        return _fail(str(exc))
    objects, label = found
    matches = [
        o
        for k, o in objects.items()
        if k.rpartition("/")[2] == name and (not namespace or k.partition("/")[0] == namespace)
    ]
    if not matches:
        return _fail(f"no catalog for {args.practice} in {label}", 1)
    if len(matches) > 1:
        keys = ", ".join(sorted(catalog_key(o) for o in matches))
        return _fail(f"{name} is in several namespaces ({keys}); name one with -n", 2)
    obj = _portable(matches[0])
    if args.output == "json":
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))
    else:
        try:
            sys.stdout.write(render_table(Catalog.from_object(obj)))
        except ValueError as exc:
            return _fail(str(exc))
    return 0


def run_export(args: argparse.Namespace) -> int:
    """`pmsctl catalog export`."""
    import yaml

    try:
        objects, label = load_catalogs(args, args.namespace)
    except CatalogSourceError as exc:
        return _fail(str(exc))
    if args.namespace:
        wanted = set(args.namespace)
        objects = {k: o for k, o in objects.items() if k.partition("/")[0] in wanted}
    portable = [_portable(o) for o in objects.values()]
    out = Path(args.output)
    text = (
        yaml.safe_dump(catalog_list(portable), sort_keys=False)
        if out.suffix in (".yaml", ".yml")
        else dump_catalog_list(portable)
    )
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        return _fail(f"{out}: {exc}")
    print(f"pmsctl catalog: wrote {len(objects)} catalogs from {label} to {out}", file=sys.stderr)
    return 0
