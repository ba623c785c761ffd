"""Run every case of tests/bad_input_cases.py through the real CLI and write the table of answers.

    .venv/bin/python scripts/bad_inputs.py                 # -> docs/bad_inputs.md
    .venv/bin/python scripts/bad_inputs.py --out /tmp/t.md --limit 5

Each case runs `python -m mmbench.train <overrides>` in a fresh temporary directory with an empty data
cache; refused cases must exit 2 within seconds with no traceback and nothing prepared. Accepted
cases (the controls) are only checked to get past validation: they are stopped once training data
preparation starts (the CLI is given `trainer.fast_dev_run=true` and a tiny Shapes size so they end
quickly), so their time is not a refusal time. The verdict column says whether the answer is the
expected one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import ACCEPTED, CASES  # noqa: E402

TINY_RUN = [
    "trainer.fast_dev_run=true",
    "data.source.num_train=64",
    "data.source.num_val=16",
    "data.source.num_test=16",
    "logger=csv",
    "eval.protocols=[vqa]",
]


def run_case(overrides: list[str], expected: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        env = {**os.environ, "MMBENCH_CACHE": str(cache), "WANDB_MODE": "offline"}
        extra = TINY_RUN if expected == ACCEPTED else []
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "mmbench.train", *overrides, *extra, f"hydra.run.dir={tmp}/run"],
            capture_output=True,
            text=True,
            cwd=tmp,
            env=env,
            timeout=600,
        )
        seconds = time.perf_counter() - t0
        prepared = cache.exists() and any(cache.iterdir())
    output = done.stderr + done.stdout
    message = next((line.strip() for line in done.stderr.splitlines() if line.strip().startswith("- ")), "")
    if expected == ACCEPTED:  # past validation, and no traceback (an uncached hub id may still be refused offline)
        ok = "invalid configuration" not in output and "Traceback" not in output
    else:
        ok = done.returncode == 2 and "Traceback" not in output and not prepared
    return {"exit": done.returncode, "seconds": seconds, "message": message, "ok": ok, "prepared": prepared}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bad_inputs.md")
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    args = parser.parse_args(argv)
    rows, load = [], os.getloadavg()[0]
    for overrides, expected, _ in CASES[: args.limit]:
        result = run_case(overrides, expected)
        rows.append((overrides, expected, result))
        print(
            f"{'ok ' if result['ok'] else 'BAD'} exit {result['exit']} {result['seconds']:5.1f}s  {' '.join(overrides) or '(default)'}",
            flush=True,
        )
    refused = [r for _, e, r in rows if e != ACCEPTED]
    lines = [
        "# Bad inputs: what mmbench answers",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python scripts/bad_inputs.py` (every case of",
        "`tests/bad_input_cases.py` through the real CLI, empty data cache, one at a time). Refused: exit 2, one",
        "message, no traceback, no data prepared. Controls must get past validation without a traceback (run as `fast_dev_run`",
        "on a tiny Shapes; their time includes data generation and training, not a refusal).",
        f"Load average at the start: {load:.1f} on {os.cpu_count()} cores"
        + (" (a **loaded** machine: times are upper bounds)." if load > 1.0 else "."),
        "",
        f"{sum(r['ok'] for _, _, r in rows)} of {len(rows)} answered as expected; refusals took "
        f"{min(r['seconds'] for r in refused):.1f}-{max(r['seconds'] for r in refused):.1f} s "
        f"(median {sorted(r['seconds'] for r in refused)[len(refused) // 2]:.1f} s)."
        if refused
        else "",
        "",
        "| overrides | expected | exit | seconds | verdict | first line of the message |",
        "|---|---|---|---|---|---|",
    ]
    for overrides, expected, r in rows:
        msg = r["message"].replace("|", "\\|")[:140]
        lines.append(
            f"| `{' '.join(overrides) or '(default)'}` | {expected} | {r['exit']} | {r['seconds']:.1f} | "
            f"{'as expected' if r['ok'] else '**wrong**'} | {msg} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
