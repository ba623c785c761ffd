#!/usr/bin/env bash
# The GPU path checked in one command, at most ~6 minutes on one GPU (scripts/gpu_check.py says what it
# checks; docs/performance.md what it proved): bash scripts/gpu_check.sh [--out DIR] [--cpu] [...]
# Results go to --out, else $OUT, else gpu_check_out/: results.json, summary.md, logs/, runs/.
# Nothing is installed or downloaded: it runs with $MMBENCH_PYTHON, else the checkout's .venv (carry it
# along to the GPU machine), else a python3 that already has mmbench's dependencies; otherwise it stops
# and says which of these to provide. The exit status is 0 only when every check passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # mmbench from this checkout, wherever it was copied to

# what the check imports: mmbench's run and evaluation (torch, Lightning, Hydra, datasets, ...) and pytest
# (the preset table is tests/test_presets.py's)
probe='import torch, pytorch_lightning, hydra, datasets, pytest, mmbench.pipeline, mmbench.evaluate
print("torch", torch.__version__, "CUDA", torch.version.cuda)'
tried=()
for candidate in "${MMBENCH_PYTHON:-}" "$ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
  [ -n "$candidate" ] || continue
  if [ -x "$candidate" ] && why="$("$candidate" -c "$probe" 2>&1)"; then
    PY="$candidate"
    echo "gpu_check: $PY (${why##*$'\n'})" >&2
    break
  fi
  tried+=("$candidate: $(printf '%s\n' "${why:-not an executable file}" | tail -n 1)")  # the error's last line
  why=""
done
if [ -z "${PY:-}" ]; then
  {
    echo "gpu_check: no Python with mmbench's dependencies; tried:"
    for line in "${tried[@]}"; do echo "  - $line"; done
    echo "Provide one: carry the checkout's .venv along (built by scripts/setup_env.sh on a machine of the"
    echo "same OS and Python), or set MMBENCH_PYTHON=/path/to/python of an environment with torch (CUDA build),"
    echo "pytorch-lightning, hydra-core, datasets, pytest (pip install -e '.[dev]'), or run scripts/setup_env.sh"
    echo "where pip can reach PyPI or a wheel cache."
  } >&2
  exit 2
fi
# the driver keeps to its own budget (--budget-s; 345 s, --cpu 600 s); this is the backstop if it does not
limit=420
for arg in "$@"; do [ "$arg" = "--cpu" ] && limit=660; done
exec timeout --signal=TERM --kill-after=30 "${MMBENCH_GPU_CHECK_LIMIT_S:-$limit}" "$PY" "$ROOT/scripts/gpu_check.py" "$@"
