"""Real image-text data through HF `datasets`: a hub id or local data -> the canonical columns.

`build_hf` is a data source like `build_shapes` (conf/data/hf.yaml instantiates it `_partial_` as
`data.source`): it loads a hub id or local data, maps the dataset's columns onto roles, converts every split
into the canonical columns (one row per image; `mmbench.data.columns`) and caches them as Arrow under
`<cache_dir>/hf-<hash>`. Bad data is refused with its file, row or column named; nothing is downloaded
offline. Column mapping, splits, caching, bad data and network: docs/data.md (`data=hf`).

One concept per module; every public name is also importable from here (`mmbench.data.hf.X`, as
`conf/data/hf.yaml` names `build_hf`):

    hub_access  loading from the hub without hangs (`hub_access`, `HubUnavailableError`)
    roles       the role -> column mapping (`Columns`) and reading a role's values from a row
    loading     a hub id or local data -> the raw DatasetDict; bad local rows named
    splits      which source split becomes train / val / test
    images      an image cell -> a square uint8 array
    convert     source rows -> canonical rows, one Arrow file per split
    build       `build_hf`: the cached, converted dataset; `config_problems`, `provided_fields`
"""

from __future__ import annotations

from mmbench.data.hf.build import (
    BAD_IMAGE_POLICIES,
    build_hf,
    config_problems,
    hf_config_hash,
    provided_fields,
    read_stats,
)
from mmbench.data.hf.convert import CONVERTER_VERSION, MAX_LISTED, canonical_features
from mmbench.data.hf.hub_access import HubUnavailableError, hub_access
from mmbench.data.hf.images import read_image, square_image
from mmbench.data.hf.loading import LOCAL_BUILDERS, load_source
from mmbench.data.hf.roles import ROLES, Columns
from mmbench.data.hf.splits import SPLITS

__all__ = [
    "BAD_IMAGE_POLICIES",
    "CONVERTER_VERSION",
    "LOCAL_BUILDERS",
    "MAX_LISTED",
    "ROLES",
    "SPLITS",
    "Columns",
    "HubUnavailableError",
    "build_hf",
    "canonical_features",
    "config_problems",
    "hf_config_hash",
    "hub_access",
    "load_source",
    "provided_fields",
    "read_image",
    "read_stats",
    "square_image",
]
