#!/usr/bin/env bash
# Build the kstatus command (cmd/kstatus: the readiness rules Flux applies to custom resources,
# from the pinned sigs.k8s.io/cli-utils module) into a cache folder outside the checkout, keyed
# by version, and print that folder on the last line of stdout. Progress goes to stderr; a
# second run with the same recipe costs nothing; concurrent callers wait for the first build.
#
# Environment: PMSCTL_KSTATUS_CACHE overrides the cache root (default ~/.cache/pmsctl/kstatus).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1=="sigs.k8s.io/cli-utils"{print $2; exit}' "$here/go.mod")"
cache="${PMSCTL_KSTATUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmsctl/kstatus}"
out="$cache/cli-utils-${version}"
recipe="$(cd "$here" && cat go.mod go.sum build.sh cmd/*/main.go | cksum | awk '{print $1}')"

cached() {
  [ -x "$out/kstatus" ] && [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]
}

if cached; then
  echo "kstatus: cached in $out" >&2
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "kstatus: the Go toolchain is missing; install Go (docs/testenv.md) and run again" >&2
  exit 2
fi
mkdir -p "$cache"
exec 9>"$out.lock"
if ! flock -n 9; then
  echo "kstatus: another build of $out is running; waiting for it" >&2
  flock 9
fi
if cached; then
  echo "$out"
  exit 0
fi
rm -rf "$out.partial"
mkdir -p "$out.partial"
cd "$here"
echo "kstatus: building cli-utils $version kstatus into $out" >&2
if ! CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out.partial/kstatus" ./cmd/kstatus; then
  echo "kstatus: the build failed (see the Go errors above); nothing was cached" >&2
  exit 1
fi
echo "$recipe" >"$out.partial/.recipe"
rm -rf "$out"
mv "$out.partial" "$out"
echo "kstatus: ready in $out" >&2
echo "$out"
