#!/usr/bin/env bash
# Build the pmsctl image (the Dockerfile at the top of the checkout) with the first builder
# that can actually run here: docker (needs a reachable daemon), podman, then buildah. A
# builder that is installed but cannot run (a docker client without a daemon, podman without
# user namespaces) is skipped with its reason; when none can run, say why for each and exit 1.
#
# Environment: IMAGE (default ghcr.io/dental-dev/pmsctl:VERSION), VERSION (default: the
# version in pyproject.toml), GIT_COMMIT (default: git rev-parse HEAD when in a checkout),
# BUILDER (docker, podman or buildah: only try that one).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${VERSION:-$(awk -F'"' '$1 ~ /^version *= *$/ {print $2; exit}' "$root/pyproject.toml")}"
commit="${GIT_COMMIT:-$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)}"
image="${IMAGE:-ghcr.io/dental-dev/pmsctl:$version}"
candidates=(docker podman buildah)
[ -n "${BUILDER:-}" ] && candidates=("$BUILDER")

reasons=()
usable() {  # usable BUILDER: exit 0 when it can build; otherwise append the reason
  local b="$1" out
  if ! command -v "$b" >/dev/null 2>&1; then
    reasons+=("$b: not installed")
    return 1
  fi
  # `info` talks to the daemon (docker) or sets up storage and user namespaces (podman,
  # buildah): the cheapest call that fails the way a build would.
  if ! out="$(timeout 20 "$b" info 2>&1 >/dev/null)"; then
    reasons+=("$b: installed but cannot run: $(printf '%s' "$out" | grep -v '^\s*$' | tail -n 1)")
    return 1
  fi
}

for b in "${candidates[@]}"; do
  if usable "$b"; then
    echo "image: building $image (version $version, commit $commit) with $b" >&2
    args=(--build-arg "VERSION=$version" --build-arg "GIT_COMMIT=$commit" -t "$image" -f "$root/Dockerfile" "$root")
    case "$b" in
      buildah) exec buildah bud --layers "${args[@]}" ;;
      *) exec "$b" build "${args[@]}" ;;
    esac
  fi
done

{
  echo "image: no container builder can run on this machine, so $image was not built:"
  for r in "${reasons[@]}"; do echo "image:   $r"; done
  echo "image: start a Docker daemon, or install podman or buildah; the base image"
  echo "image: (the Dockerfile's PYTHON_IMAGE) must also be reachable from its registry or mirror."
} >&2
exit 1
