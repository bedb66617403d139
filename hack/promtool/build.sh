#!/usr/bin/env bash
# Build promtool (checks and unit-tests the Prometheus rules in deploy/monitoring/) from the
# pinned Prometheus Go module in this folder into a cache folder outside the checkout, keyed by
# version, and print that folder on the last line of stdout. Progress goes to stderr. A second
# run with the same version costs nothing; concurrent callers wait for the first build (a lock
# next to the cache folder).
#
# Environment: PMSCTL_PROMTOOL_CACHE overrides the cache root (default ~/.cache/pmsctl/promtool).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prom_version="$(awk '$1=="github.com/prometheus/prometheus"{print $2; exit}' "$here/go.mod")"
prom_version="${prom_version:-$(awk '$1=="require" && $2=="github.com/prometheus/prometheus"{print $3; exit}' "$here/go.mod")}"
go_required="$(awk '$1=="go"{print $2; exit}' "$here/go.mod")"
cache="${PMSCTL_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmsctl/promtool}"
out="$cache/prometheus-${prom_version}"
# The recipe's fingerprint: a cached folder built by another go.mod or build.sh is stale.
recipe="$(cd "$here" && cat go.mod go.sum build.sh | cksum | awk '{print $1}')"

cached() {
  [ -x "$out/promtool" ] && [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]
}

if cached; then
  echo "promtool: cached in $out" >&2
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
promtool: the Go toolchain is missing, so promtool cannot be built.
promtool: install Go $go_required or newer and put it on PATH, then run 'make check-rules' again
promtool: (docs/testenv.md lists the ways to install Go). It also needs the Go module proxy.
MSG
  exit 2
fi

mkdir -p "$cache"
lock="$out.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  if ! flock -n 9; then
    echo "promtool: another build of $out is running; waiting for it" >&2
    flock 9
  fi
else
  until mkdir "$lock.d" 2>/dev/null; do
    echo "promtool: another build of $out is running; waiting for it" >&2
    sleep 10
  done
  trap 'rmdir "$lock.d" 2>/dev/null || true' EXIT
fi
if cached; then
  echo "promtool: built meanwhile by another caller, cached in $out" >&2
  echo "$out"
  exit 0
fi

rm -rf "$out.partial"
mkdir -p "$out.partial"
cd "$here"
echo "promtool: building Prometheus $prom_version promtool with $(go version | awk '{print $3}') into $out" >&2
echo "promtool: the first build takes several minutes on 2 cores; later runs are cached" >&2
start=$(date +%s)
beat=""
trap '[ -n "$beat" ] && kill "$beat" 2>/dev/null; rmdir "$lock.d" 2>/dev/null || true' EXIT
( while sleep 30; do echo "promtool:   ... still building ($(( $(date +%s) - start ))s)" >&2; done ) &
beat=$!
# The version stamp promtool --version prints, as the upstream release build sets it.
ldflags="-s -w -X github.com/prometheus/common/version.Version=${prom_version#v}"
# remove_all_sd leaves out the service-discovery plugins (cloud SDKs: most of the compile time);
# rule checks and rule unit tests do not use them.
if ! CGO_ENABLED=0 go build -trimpath -tags remove_all_sd -ldflags="$ldflags" \
  -o "$out.partial/promtool" github.com/prometheus/prometheus/cmd/promtool; then
  echo "promtool: the build failed (see the Go errors above); nothing was cached" >&2
  exit 1
fi
kill "$beat" 2>/dev/null || true
beat=""
echo "$recipe" >"$out.partial/.recipe"
rm -rf "$out"
mv "$out.partial" "$out"
echo "promtool: ready in $out after $(( $(date +%s) - start ))s" >&2
echo "$out"
