"""Same seed, same metrics: record every preset's tiny run (and optionally the default run) and compare two records.

A refactor that should not change behaviour (issue 16) is checked by running this before and after it on
the same machine and comparing: every metric must be bit-identical (compared as the exact floats
metrics.json holds).

    .venv/bin/python scripts/refactor_check.py record /tmp/before.json [--default-run]
    .venv/bin/python scripts/refactor_check.py compare /tmp/before.json /tmp/after.json

Each run is a real `mmbench-train` process (`python -m mmbench.train` from the checkout this script is
in, so a second checkout can record its own code) with the test suite's tiny settings and every objective the preset supports, its own
temporary run directory and Shapes cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY  # noqa: E402  (the tiny settings of the test suite, one definition)
from tests.test_presets import supported_objectives  # noqa: E402  (what each preset can train, as the tests say)


def _run(overrides: list[str], run_dir: Path, cache: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MMBENCH_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    cmd = [sys.executable, "-m", "mmbench.train", *overrides, f"hydra.run.dir={run_dir}"]
    res = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    rec = json.loads((run_dir / "metrics.json").read_text())
    return {"status": rec["status"], "metrics": rec["metrics"]}


def record(out: Path, default_run: bool) -> None:
    presets = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for preset in presets:
            objectives = f"objective=[{','.join(supported_objectives(preset))}]"
            results[preset] = _run([f"model={preset}", objectives, *TINY], base / preset, base / "cache")
            print(preset, results[preset].get("status", "ERROR"), flush=True)
        if default_run:
            results["default_run"] = _run(["logger=csv"], base / "default_run", base / "cache")
            print("default_run", results["default_run"].get("status", "ERROR"), flush=True)
    out.write_text(json.dumps({"checkout": str(ROOT), "runs": results}, indent=1, sort_keys=True))


def compare(a: Path, b: Path) -> int:
    ra, rb = json.loads(a.read_text())["runs"], json.loads(b.read_text())["runs"]
    differences = 0
    for name in sorted(set(ra) | set(rb)):
        if name not in ra:  # a preset added since the first record: nothing to compare it with
            print(f"{name}: new in the second record (status {rb[name].get('status', 'failed')})")
            differences += "metrics" not in rb[name]
            continue
        ma, mb = ra.get(name, {}).get("metrics"), rb.get(name, {}).get("metrics")
        if ma is None or mb is None:
            print(f"{name}: missing or failed in {'the first' if ma is None else 'the second'} record")
            differences += 1
            continue
        diff = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        if diff:
            differences += 1
            shown = ", ".join(f"{k}: {ma.get(k)} -> {mb.get(k)}" for k in diff[:5])
            print(f"{name}: {len(diff)} of {len(ma)} metrics differ ({shown})")
        else:
            print(f"{name}: {len(ma)} metrics identical")
    return 1 if differences else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run every preset tiny and write their metrics")
    rec.add_argument("out", type=Path)
    rec.add_argument("--default-run", action="store_true", help="also the default run (about 3 minutes)")
    cmp = sub.add_parser("compare", help="compare two records; exit 1 if any metric differs")
    cmp.add_argument("a", type=Path)
    cmp.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.default_run)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
