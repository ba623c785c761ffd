"""`mmbench-report` (placeholder until the reporting issue lands)."""

import sys


def main() -> None:
    print("mmbench-report: not implemented yet; see issue 'From sweep to paper table'", file=sys.stderr)
    sys.exit(1)
