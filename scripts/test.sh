#!/usr/bin/env bash
# Set up the environment if missing, then run the test suite (extra args go to pytest).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export WANDB_MODE=offline WANDB_SILENT=true
exec "$ROOT/.venv/bin/python" -m pytest "$@"
