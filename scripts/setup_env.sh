#!/usr/bin/env bash
# Create .venv in the repository and install mmbench with its dev extras, once.
# Re-runs are no-ops until pyproject.toml changes. Torch is pinned to a CPU-capable release that
# this project supports (<= 2.14.1); pip takes it from the local wheel cache when one exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.mmbench-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "mmbench: setting up $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==${MMBENCH_TORCH:-2.14.1}" "torchvision==${MMBENCH_TORCHVISION:-0.29.1}"
"$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
echo "$WANT" > "$STAMP"
