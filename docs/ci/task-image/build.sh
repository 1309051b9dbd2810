#!/usr/bin/env bash
# Build the CI task image (docs/ci/task-image/Dockerfile) with imagekit from this checkout:
#   docs/ci/task-image/build.sh TAG [BASE]          e.g. build.sh registry.example.com/ci/imagekit-task:1 debian:bookworm
# BASE defaults to debian:bookworm; the test suite passes its bootstrapped Debian base (no registry pull).
# BUILDER=buildah builds it daemonless (the same Dockerfile); then push TAG with `skopeo copy` or `buildah push`.
set -euo pipefail
tag="${1:?usage: build.sh TAG [BASE]}"
base="${2:-debian:bookworm}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-python3}"
ctx="$(mktemp -d "${TMPDIR:-/tmp}/imagekit-task-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$here/Dockerfile" "$here/containers.conf" "$here/storage.conf" "$ctx/"
# imagekit and its dependencies as wheels (the image's python3 is bookworm's 3.11: build with a 3.11)
"$python" -m pip wheel -q --wheel-dir "$ctx/wheels" "$repo"
"${BUILDER:-docker}" build --build-arg "BASE=$base" -t "$tag" "$ctx"
