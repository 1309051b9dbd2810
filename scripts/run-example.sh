#!/usr/bin/env bash
# The main job on the embedded default, on a fresh Debian machine as root: set up, build the CPU example with
# Docker (BuildKit), boot and verify it, sign its manifest into the local store, and say where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
spec=examples/tts/imagekit-cpu.yaml
t0=$(date +%s)
.venv/bin/imagekit validate -f "$spec"
.venv/bin/imagekit build -f "$spec" --target docker
.venv/bin/imagekit manifest list -f "$spec"
echo "run-example: built, verified and recorded in $(( $(date +%s) - t0 ))s" >&2
