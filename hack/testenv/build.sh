#!/usr/bin/env bash
# Build etcd, kube-apiserver and kubectl from the pinned Go modules in this folder into a cache
# folder outside the checkout, keyed by version, and print that folder on the last line of stdout.
# Progress goes to stderr. A second run with the same versions costs nothing. Safe to run
# concurrently: a second caller waits for the first build (a lock next to the cache folder) and
# then finds it cached.
#
# Environment: PMSCTL_TESTENV_CACHE overrides the cache root (default ~/.cache/pmsctl/testenv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$here/go.mod")"
go_required="$(awk '$1=="go"{print $2; exit}' "$here/go.mod")"
cache="${PMSCTL_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmsctl/testenv}"
out="$cache/k8s-${k8s_version}_etcd-${etcd_version}"
bins=(etcd kubectl kube-apiserver)
# The recipe's fingerprint: a cached folder built by another go.mod, main.go or build.sh is stale.
recipe="$(cd "$here" && cat go.mod go.sum build.sh cmd/*/main.go | cksum | awk '{print $1}')"

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done
  [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]
}

if cached; then
  echo "testenv: cached in $out" >&2
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<EOF
testenv: the Go toolchain is missing, so etcd, kube-apiserver and kubectl cannot be built.
testenv: install Go $go_required or newer and put it on PATH, then run 'make testenv' again:
testenv:   any OS: https://go.dev/doc/install; Linux x86-64 e.g. (curl -fsSL https://go.dev/dl/go$go_required.linux-amd64.tar.gz | sudo tar -C /usr/local -xz; export PATH=\$PATH:/usr/local/go/bin)
testenv:   Debian/Ubuntu: sudo apt-get install golang-go (if it is $go_required or newer)
testenv:   macOS Homebrew: brew install go
testenv: it also needs network access to the Go module proxy (GOPROXY, default proxy.golang.org).
testenv: or point the tests at an existing cluster: PMSCTL_TEST_KUBECONFIG=~/.kube/config (see docs/testenv.md).
EOF
  exit 2
fi

mkdir -p "$cache"
# One build at a time per version: flock where it exists (Linux), a mkdir lock elsewhere.
lock="$out.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  if ! flock -n 9; then
    echo "testenv: another build of $out is running; waiting for it" >&2
    flock 9
  fi
else
  until mkdir "$lock.d" 2>/dev/null; do
    echo "testenv: another build of $out is running; waiting for it" >&2
    sleep 10
  done
  trap 'rmdir "$lock.d" 2>/dev/null || true' EXIT
fi
if cached; then
  echo "testenv: built meanwhile by another caller, cached in $out" >&2
  echo "$out"
  exit 0
fi

rm -rf "$out.partial"
mkdir -p "$out.partial"
cd "$here"
echo "testenv: building k8s $k8s_version and etcd $etcd_version with $(go version | awk '{print $3}') into $out" >&2
echo "testenv: the first build takes about 5-25 minutes on 2 cores (downloading modules and compiling); later runs are cached" >&2
total_start=$(date +%s)
# Stamp the Kubernetes version into the binaries like the upstream release build does
# (otherwise kube-apiserver and kubectl report v0.0.0-master).
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
beat=""
trap '[ -n "$beat" ] && kill "$beat" 2>/dev/null; rmdir "$lock.d" 2>/dev/null || true' EXIT
n=0
for bin in "${bins[@]}"; do
  n=$((n + 1))
  echo "testenv: [$n/${#bins[@]}] building $bin" >&2
  start=$(date +%s)
  # A heartbeat while the compiler works, so a long first build never looks hung.
  ( while sleep 30; do echo "testenv:   ... still building $bin ($(( $(date +%s) - start ))s)" >&2; done ) &
  beat=$!
  if ! CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out.partial/$bin" "./cmd/$bin"; then
    kill "$beat" 2>/dev/null || true
    echo "testenv: building $bin failed (see the Go errors above); nothing was cached" >&2
    exit 1
  fi
  kill "$beat" 2>/dev/null || true
  beat=""
  echo "testenv:   $bin built in $(( $(date +%s) - start ))s" >&2
done
echo "$recipe" >"$out.partial/.recipe"
rm -rf "$out"
mv "$out.partial" "$out"
echo "testenv: ready in $out after $(( $(date +%s) - total_start ))s" >&2
echo "$out"
