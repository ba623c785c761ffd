#!/usr/bin/env bash
# Set up the environment if missing, then run the test suite (extra args go to pytest), one pytest-xdist
# worker per core, tests handed out as workers free up (worksteal: the suite's end-to-end tests take 10-35 s,
# most others under 1 s); tests/conftest.py gives each worker its share of the cores' threads.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export WANDB_MODE=offline WANDB_SILENT=true
exec "$ROOT/.venv/bin/python" -m pytest -n auto --dist worksteal "$@"
