"""`mmbench-eval` (placeholder until the evaluation issue lands)."""

import sys


def main() -> None:
    print("mmbench-eval: not implemented yet; see issue 'Evaluation protocols'", file=sys.stderr)
    sys.exit(1)
