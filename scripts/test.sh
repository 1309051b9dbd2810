#!/usr/bin/env bash
# Set up this machine (as root) and run every check: lint, format, types, and the whole test suite against the
# real Docker Engine, packer and a moto server. Under CI=true a test that needs a missing tool fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
export CI="${CI:-true}"
echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/pytest -q "$@"
