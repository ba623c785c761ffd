"""The error every data problem is reported with (its own module, so that the data modules that raise
it -- datamodule, hf, tokenizer -- need not import one another)."""

from __future__ import annotations

from mmbench.config import ConfigError


class DataError(ConfigError):
    """Data that cannot be trained on (missing / empty split, size mismatch, a broken row); a ConfigError,
    so the CLI prints one message and exits with code 2, before training."""
