#!/usr/bin/env bash
# Set up the environment if missing, then run mmbench-train with any Hydra overrides given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/mmbench-train" "$@"
