"""Real image-text data through HF `datasets`: a hub id or local data -> the canonical columns.

`build_hf` is a data source like `build_shapes` (conf/data/hf.yaml instantiates it `_partial_` as
`data.source`). It loads with `datasets.load_dataset` (a hub id, a local directory -- imagefolder with
metadata.jsonl, parquet, json -- or data files), maps the dataset's columns onto roles

    image, text, question, answers, answer, question_type, label, image_id, region_feats, boxes, region_labels

and converts every split into the canonical columns of `mmbench.data.datamodule`: one row per image
with `image_id`, `pixels` (raw HWC uint8 bytes, resized on the short side and centre-cropped to
`image_size` once) + `image_size`, `captions` (list), and when mapped `questions` / `answers` (the
majority answer per question) / `all_answers` (every annotator answer, for VQA soft scores) /
`question_types`, `caption_labels` (one class index per caption), `region_feats` / `boxes` /
`labels` (precomputed regions, see `mmbench.data.regions`). Rows of the source that share an image
(an `image_id`, or the same image file) become one canonical row, so captions of one image are
positives for each other and never negatives. A row without text uses its question as its caption.

The converted splits are written as Arrow files under `<cache_dir>/hf-<hash>`, where the hash
covers the source config, the converter version and the data's identity (file sizes and mtimes for
local data, the split fingerprints for hub datasets); the next run memory-maps them. An entry that
does not load (a truncated Arrow file) is converted again, with a warning naming it, or, when the
source cannot be loaded now, refused with a message naming the directory to delete.

Bad rows are named: a local JSON Lines / CSV file `datasets` cannot parse fails with the file and its
line; empty captions are dropped with one warning giving their count and rows (counted from 1), and a
split whose captions are all empty is refused.

Network: nothing is downloaded when `offline` is true or when the hub does not answer within a few
seconds; a hub id that is not in the local HF cache then fails at once with a message saying so.

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
