"""Where pretrained weights come from: a local directory or a Hugging Face hub id.

Every pretrained path in mmbench (encoder/text=hf, encoder/vision=hf, model.init_from, and
language_model=hf through `load_hf_causal_lm`) goes through `load_hf`, so they share one rule:

* a local directory is loaded as is;
* a hub id is loaded from the local HF cache first (`local_files_only=True`);
* only if it is not cached, and the hub is allowed and reachable (`mmbench.hub`, the policy every
  download path shares), it is downloaded. Otherwise `PretrainedNotFound` says so at once: no hang, no retry loop.
"""

from __future__ import annotations

import os

from mmbench import hub


class PretrainedNotFound(OSError):
    """A pretrained model that is neither a local directory nor available (cached or downloadable)."""


def _not_found(name: str, why: str) -> PretrainedNotFound:
    return PretrainedNotFound(
        f"pretrained model '{name}' is not a local directory and is not in the Hugging Face cache, and {why}. "
        f"Download it once with network access (e.g. `huggingface-cli download {name}`), or pass a local "
        f"directory written by `save_pretrained`."
    )


def load_hf(loader, name: str, **kwargs):
    """`loader(name, local_files_only=..., **kwargs)` (a `from_pretrained`) under the rule above."""
    if os.path.isdir(name):
        return loader(name, **kwargs)
    if os.path.exists(name):
        raise PretrainedNotFound(f"'{name}' is a file; expected a directory written by save_pretrained or a hub id")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as cached_error:  # not cached (transformers raises OSError / EnvironmentError)
        why = hub.hub_allowed()  # the one network policy (mmbench.hub)
        if why is not None:
            raise _not_found(name, why) from cached_error
    return loader(name, **kwargs)


def load_hf_config(name: str):
    from transformers import AutoConfig

    return load_hf(AutoConfig.from_pretrained, name)


def load_hf_model(name: str, **kwargs):
    """`AutoModel` for `name` (the base model without task heads) under the rule above."""
    from transformers import AutoModel

    return load_hf(AutoModel.from_pretrained, name, **kwargs)


def load_hf_json(name: str, filename: str) -> dict | None:
    """A JSON file of a model directory / hub repo (e.g. preprocessor_config.json), None if absent."""
    import json

    from transformers.utils import cached_file

    def loader(path, **kw):
        return cached_file(path, filename, _raise_exceptions_for_missing_entries=False, **kw)

    path: str | None
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        path = path if os.path.exists(path) else None
    else:
        try:
            path = load_hf(loader, name)
        except OSError:
            path = None
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def load_hf_causal_lm(name: str, **kwargs):
    """`AutoModelForCausalLM` for `name` (the decoder with its LM head) under the rule above."""
    from transformers import AutoModelForCausalLM

    return load_hf(AutoModelForCausalLM.from_pretrained, name, **kwargs)
