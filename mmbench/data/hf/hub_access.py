"""Loading from the HF hub without hangs: `hub_access` runs a load in offline mode when the hub may not be
used (data.offline, the environment, or no answer within seconds) and turns a miss of the local cache into
one `HubUnavailableError`. The policy itself (offline variables, reachability probe) is `mmbench.hub`'s;
datasets (`loading`) and tokenizers (`mmbench.data.tokenizer`) both load through this."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import datasets

from mmbench import hub
from mmbench.config import ConfigError
from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2


class HubUnavailableError(DataError):
    """A hub id that is neither cached locally nor reachable."""


@contextlib.contextmanager
def hub_access(name: str, offline: bool = False, what: str = "dataset") -> Iterator[bool]:
    """Context for loading `name` from the hub; yields True when only the local cache may be used.

    Offline (requested, set in the environment, or the hub unreachable) the body runs in HF offline
    mode, and a failure to find `name` locally becomes one `HubUnavailableError` naming the reason,
    instead of minutes of retries.
    """
    reason = "data.offline=true" if offline else hub.hub_allowed()
    if reason is None:
        yield False
        return
    try:
        with hub.offline_mode():
            yield True
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as err:
        if isinstance(err, ConfigError) and not isinstance(err, HubUnavailableError):
            raise
        from huggingface_hub import constants

        cause = err.__cause__ if isinstance(err, ValueError) and err.__cause__ is not None else err
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        cache = datasets.config.HF_DATASETS_CACHE if what == "dataset" else constants.HF_HUB_CACHE
        setting = "data.source.path" if what == "dataset" else "data.tokenizer.name_or_path"
        raise HubUnavailableError(
            f"{what} {name!r} is not in the local HF cache ({cache}) and cannot be downloaded: {reason}. "
            f"Download it once with network access, or set {setting} to a local copy "
            f"[{type(cause).__name__}: {detail}]"
        ) from err
