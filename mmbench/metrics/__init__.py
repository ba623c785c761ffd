"""The evaluation protocols (docs/metrics.md); `suite.evaluate_suite` runs them.

A clean protocol is any node of the `eval` config with a `_target_` (its function); `robustness`
re-runs clean protocols under corruptions. The names are read from the config here, apart from the
protocols' code, so config validation can check `eval.protocols` without importing the evaluation
stack (matplotlib, pycocoevalcap, ...).
"""

from collections.abc import Mapping
from pathlib import Path

EVAL_DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "eval" / "default.yaml"  # every setting's default
ROBUSTNESS = "robustness"


def clean_protocols(settings: Mapping) -> list[str]:
    """Names of the clean protocols of an `eval` node: its sub-nodes that name a function (`_target_`)."""
    return [name for name, node in settings.items() if isinstance(node, Mapping) and "_target_" in node]


def protocol_names(settings: Mapping) -> list[str]:
    """Every name `eval.protocols` accepts under these settings."""
    return [*clean_protocols(settings), ROBUSTNESS]
