"""The evaluation protocols (docs/metrics.md); `suite.evaluate_suite` runs them.

The names live here, apart from the protocols' code, so config validation can check
`eval.protocols` without importing the evaluation stack (matplotlib, pycocoevalcap, ...).
"""

CLEAN_PROTOCOLS = ("retrieval", "vqa", "diagnostics", "captioning", "zeroshot")
PROTOCOLS = (*CLEAN_PROTOCOLS, "robustness")  # every name eval.protocols accepts
