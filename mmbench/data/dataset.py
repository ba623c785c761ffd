"""The examples of one split: every (image, caption k) pair of the canonical dataset, with question
k mod #questions of the image (`PairDataset`), as the dicts the collator (`mmbench.data.collate`) stacks.
The dataset columns and the keys of their values in an example are `mmbench.data.columns.COLUMNS`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc
from torch.utils.data import Dataset

from mmbench.data import columns as schema
from mmbench.data.claims import claim_code
from mmbench.data.image_codec import IMAGE_FORMATS, decode_pixels

EAGER_PIXEL_BYTES = 1 << 30  # splits with fewer decoded pixel bytes are decoded into memory; larger ones per row
PIXEL_COLUMNS = ("pixels", "pixels_right")  # image columns (raw HWC uint8, JPEG or PNG): decoded here
VQA_ANNOTATORS = 3  # VQAv2 soft score of an answer: min(1, #annotators who gave it / 3)


class PairDataset(Dataset):
    """(image, caption k, question k mod Q) examples of one split; a two-image example (NLVR2: one row per
    image pair) also carries its right image (`pixels_right` -> example key `image_right`).

    Text columns are held in memory; decoded pixels too when the split is small (Shapes), otherwise each
    row's image is read from the memory-mapped Arrow table and decoded (JPEG / PNG: `image_format`) on
    access, in the loader's workers. Region features are always read on access.
    """

    def __init__(self, split, answer_index: dict[str, int]):
        size = int(split[0]["image_size"]) if len(split) else 0
        self.image_size = size
        cols = split.column_names
        # the images of a row: `pixels`, and the right image of a two-image example (NLVR2) when the data has it
        pixel_columns = [c for c in PIXEL_COLUMNS if c in cols]
        eager = len(split) * size * size * 3 * len(pixel_columns) <= EAGER_PIXEL_BYTES
        image_format = _image_format(split)
        self.images = _pixels(split, "pixels", size, eager, image_format)
        self.images_right = (
            _pixels(split, "pixels_right", size, eager, image_format) if "pixels_right" in cols else None
        )
        self.image_ids = np.asarray(split["image_id"], dtype=np.int64)
        # the text and box columns as Python lists, read once: `split[name]` is a lazy `datasets.Column`
        # whose every `[r]` is an Arrow slice (~85 us), i.e. most of a batch's loading time if read per row
        held = [c for c in cols if c not in (*PIXEL_COLUMNS, "region_feats", "image_id", "image_size", "image_format")]
        self._columns: dict[str, list] = split.select_columns(held)[:]  # {name: list over rows}
        values = self._columns
        self.captions = values["captions"]
        self.questions = values.get("questions")
        self.answers = values.get("answers")
        self.all_answers = values.get("all_answers")
        # columns carried by the generic path (`schema.Column.per`): example key -> one value per caption / image
        self.per_caption = {
            c.item: values[c.name]
            for c in schema.COLUMNS.values()
            if c.per == "caption" and c.item is not None and c.name in cols
        }
        self.per_image = {
            c.item: values[c.name]
            for c in schema.COLUMNS.values()
            if c.per == "image" and c.item is not None and c.name in cols
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
        if self.images_right is not None:
            item["image_right"] = self.images_right[r]
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
        if self.claims is not None and self.facts is not None:  # both or neither (`has_claims`)
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


def _image_format(split) -> str:
    """How the split stores its images: the `image_format` column's one value (raw without the column)."""
    if "image_format" not in split.column_names or not len(split):
        return "raw"
    formats = pc.unique(split.data.column("image_format")).to_pylist()
    if len(formats) != 1 or formats[0] not in IMAGE_FORMATS:
        raise ValueError(f"image_format column holds {formats}; a split has one of {list(IMAGE_FORMATS)}")
    return str(formats[0])


def _pixels(split, name: str, size: int, eager: bool, image_format: str = "raw"):
    """The images (N, size, size, 3) uint8 of pixel column `name`: decoded into memory, or read per row."""
    if eager and image_format == "raw":
        return np.frombuffer(b"".join(split[name]), dtype=np.uint8).reshape(len(split), size, size, 3)
    lazy = _LazyPixels(split.select_columns([name]), name, size, image_format)
    if eager:
        return np.stack([lazy[r] for r in range(len(lazy))]) if len(lazy) else np.zeros((0, size, size, 3), np.uint8)
    return lazy


class _LazyPixels:
    """`images[r]` of a large split: one row's image read from the memory-mapped Arrow table and decoded."""

    def __init__(self, pixels, name: str, size: int, image_format: str = "raw"):
        self.pixels, self.name, self.size, self.image_format = pixels, name, size, image_format

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, r) -> np.ndarray:
        return decode_pixels(self.pixels[int(r)][self.name], self.image_format, self.size)
