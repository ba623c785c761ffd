"""Messages every run printed that a user cannot act on, silenced once per process.

Each filter names one message and why it is noise for an mmbench user; anything else still shows.
Filters (not `warnings.simplefilter("ignore")`): a new warning from torch or Lightning is news.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_noise() -> None:
    # Lightning 2.6 advertises its cloud logger at every Trainer start
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropMessages("litlogger"))
    # Lightning 2.6's own use of a torch.utils._pytree API that torch 2.14 deprecated; nothing to change here
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Not silenced: W&B's "The anonymous setting has no effect" (Lightning's WandbLogger always passes
    # anonymous=None and wandb prints it with termwarn, straight to stderr, past logging and warnings).
