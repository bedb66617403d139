#!/usr/bin/env bash
# Build etcd, kube-apiserver and kubectl from the pinned Go modules in this folder into a cache
# folder outside the checkout, keyed by version, and print that folder on the last line.
# A second run with the same versions costs nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")"
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$here/go.mod")"
cache="${PMSCTL_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pmsctl/testenv}"
out="$cache/k8s-${k8s_version}_etcd-${etcd_version}"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kubectl" ]; then
  echo "testenv: cached in $out" >&2
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "testenv: the Go toolchain is missing. Install Go >= 1.26 (Debian: apt-get install golang-1.26, or https://go.dev/doc/install) and run 'make testenv' again." >&2
  exit 2
fi
mkdir -p "$out.partial"
cd "$here"
n=0
for bin in etcd kubectl kube-apiserver; do
  n=$((n + 1))
  echo "testenv: [$n/3] building $bin (k8s $k8s_version, etcd $etcd_version); the first build takes 10-25 minutes on 2 cores" >&2
  start=$(date +%s)
  # Print a heartbeat while the compiler works so a long first build never looks hung.
  ( while sleep 30; do echo "testenv:   ... still building $bin ($(( $(date +%s) - start ))s)" >&2; done ) &
  beat=$!
  trap 'kill $beat 2>/dev/null || true' EXIT
  CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.partial/$bin" "./cmd/$bin"
  kill $beat 2>/dev/null || true
  echo "testenv:   $bin built in $(( $(date +%s) - start ))s" >&2
done
rm -rf "$out"
mv "$out.partial" "$out"
echo "testenv: ready in $out" >&2
echo "$out"
