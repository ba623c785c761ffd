"""Network policy, in one place: may mmbench reach the Hugging Face hub (or W&B) now?

Every path that could download (HF datasets and tokenizers in `mmbench.data`, pretrained weights in
`mmbench.models.pretrained`, the online W&B logger) asks here, so they share one rule:

* offline when the environment says so: `HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE` or
  `TRANSFORMERS_OFFLINE` set to 1 / true / yes / on, or huggingface_hub's own flag;
* otherwise a host counts as reachable when a TCP connection to it (to the HTTPS proxy, when one is
  set) succeeds within `HUB_PROBE_TIMEOUT_S`, DNS included; the answer is cached per host for the
  process. The probe runs in a daemon thread because `getaddrinfo` ignores socket timeouts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_probe_result: dict[str, bool] = {}


def env_offline() -> bool:
    """Whether the environment forbids the hub (see the module docstring)."""
    if any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in OFFLINE_VARIABLES):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S, default_host: str = "") -> bool:
    """Whether the host of `endpoint` (a URL) accepts a TCP connection within `timeout` s, DNS included;
    behind an HTTPS proxy, whether the proxy does. Cached per host."""
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:  # behind a proxy the host is reached through it: probe the proxy instead
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host, port = url.hostname or default_host, url.port or (443 if url.scheme == "https" else 80)
    if host in _probe_result:
        return _probe_result[host]
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _probe_result[host] = result["ok"]
    return result["ok"]


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the HF endpoint is reachable (`reachable`)."""
    from huggingface_hub import constants

    return reachable(constants.ENDPOINT, timeout, default_host="huggingface.co")


def hub_allowed() -> str | None:
    """None when the hub may be used now, else why not (for messages)."""
    if env_offline():
        return "HF_HUB_OFFLINE is set"
    return None if hub_reachable() else "the hub is unreachable (no network)"


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """HF hub + datasets in offline mode for the duration (env vars and the already-imported constants)."""
    import datasets
    from huggingface_hub import constants

    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in keys}
    saved = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update({k: "1" for k in keys})
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
