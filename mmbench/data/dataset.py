"""The examples of one split: every (image, caption k) pair of the canonical dataset, with question
k mod #questions of the image (`PairDataset`), as the dicts the collator (`mmbench.data.collate`) stacks.
The dataset columns and the keys of their values in an example are `mmbench.data.columns.COLUMNS`."""

from __future__ import annotations

from collections import Counter

import numpy as np
from torch.utils.data import Dataset

from mmbench.data import columns as schema
from mmbench.data.claims import claim_code

EAGER_PIXEL_BYTES = 1 << 30  # splits with fewer pixel bytes are decoded into memory; larger ones read rows lazily
VQA_ANNOTATORS = 3  # VQAv2 soft score of an answer: min(1, #annotators who gave it / 3)


class PairDataset(Dataset):
    """(image, caption k, question k mod Q) examples of one split.

    Text columns are held in memory; pixels too when the split is small (Shapes), otherwise rows are
    read from the memory-mapped Arrow table on access. Region features are always read on access.
    """

    def __init__(self, split, answer_index: dict[str, int]):
        size = int(split[0]["image_size"]) if len(split) else 0
        self.image_size = size
        if len(split) * size * size * 3 <= EAGER_PIXEL_BYTES:
            self.images = np.frombuffer(b"".join(split["pixels"]), dtype=np.uint8).reshape(len(split), size, size, 3)
        else:
            self.images = _LazyPixels(split.select_columns(["pixels"]), size)
        self.image_ids = np.asarray(split["image_id"], dtype=np.int64)
        cols = split.column_names
        # the text and box columns as Python lists, read once: `split[name]` is a lazy `datasets.Column`
        # whose every `[r]` is an Arrow slice (~85 us), i.e. most of a batch's loading time if read per row
        held = [c for c in cols if c not in ("pixels", "region_feats", "image_id", "image_size")]
        self._columns: dict[str, list] = split.select_columns(held)[:]  # {name: list over rows}
        values = self._columns
        self.captions = values["captions"]
        self.questions = values.get("questions")
        self.answers = values.get("answers")
        self.all_answers = values.get("all_answers")
        # columns carried by the generic path (`schema.Column.per`): example key -> one value per caption / image
        self.per_caption = {
            c.item: values[c.name] for c in schema.COLUMNS.values() if c.per == "caption" and c.name in cols
        }
        self.per_image = {
            c.item: values[c.name] for c in schema.COLUMNS.values() if c.per == "image" and c.name in cols
        }
        self.boxes = values.get("boxes")
        self.labels = values.get("labels")
        self.region_feats = (
            split.select_columns(["region_feats"]).with_format("numpy") if "region_feats" in cols else None
        )
        has_claims = "caption_claims" in cols and "image_facts" in cols
        self.claims = [[claim_code(c) for c in row] for row in values["caption_claims"]] if has_claims else None
        self.facts = [[claim_code(f) for f in row] for row in values["image_facts"]] if has_claims else None
        self.answer_index = answer_index
        self.split = split  # the Arrow table: column names and columns read on demand (`column`), for the protocols
        # flat index -> (image row, caption index)
        counts = np.array([len(c) for c in self.captions])
        self.rows = np.repeat(np.arange(len(counts)), counts)
        self.caps = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=int)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list | None:
        """A column of the split as a Python list over its image rows (None if absent), read from Arrow
        once: the text and box columns at construction, any other (e.g. `image_id`) on first use."""
        if name not in self._columns:
            if name not in self.split.column_names:
                return None
            self._columns[name] = self.split[name][:]
        return self._columns[name]

    def image_item(self, r: int, text: str) -> dict:
        """Image row r paired with an arbitrary text (for evaluation protocols)."""
        item = {"image": self.images[r], "image_id": self.image_ids[r], "caption": text}
        for key, values in self.per_image.items():
            item[key] = values[r]
        if self.boxes is not None:
            item["boxes"] = self.boxes[r]
            if self.labels is not None:
                item["labels"] = self.labels[r]
            if self.region_feats is not None:
                item["region_feats"] = self.region_feats[int(r)]["region_feats"]
        return item

    def __getitem__(self, i: int) -> dict:
        r, k = int(self.rows[i]), int(self.caps[i])
        item = self.image_item(r, self.captions[r][k])
        for key, values in self.per_caption.items():
            item[key] = values[r][k]
        if self.claims is not None:
            item["claim"], item["facts"] = self.claims[r][k], self.facts[r]
        if self.questions is not None and self.questions[r]:
            q = k % len(self.questions[r])
            item["question"] = self.questions[r][q]
            item["answer"] = self.answer_index.get(self.answers[r][q], -1)
            item["answer_text"] = self.answers[r][q]  # generative VQA's target, also outside the vocabulary
            if self.all_answers is not None:
                counts = Counter(self.all_answers[r][q])
                item["answer_soft"] = [
                    (self.answer_index[a], min(1.0, c / VQA_ANNOTATORS))
                    for a, c in counts.items()
                    if a in self.answer_index
                ]
        return item


class _LazyPixels:
    """`images[r]` of a large split: one row's pixels read from the memory-mapped Arrow table."""

    def __init__(self, pixels, size: int):
        self.pixels, self.size = pixels, size

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, r) -> np.ndarray:
        return np.frombuffer(self.pixels[int(r)]["pixels"], dtype=np.uint8).reshape(self.size, self.size, 3)
