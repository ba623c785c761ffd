"""What every evaluation protocol shares: building batches from a split, encoding, eval mode.

Protocols never iterate the training dataloaders: they read a split's raw columns (images,
captions, questions, ...) and build exactly the batches they need through `Inputs`, which also
applies an optional `Corruption` (robustness curves) to every image batch and every text. So a
protocol is written once and is evaluated clean or corrupted without knowing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmbench.data.batch import Batch, to_device
from mmbench.data.collate import Collator
from mmbench.data.dataset import PairDataset
from mmbench.models.outputs import Features
from mmbench.objectives.base import Embedder, Objective


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """`module.eval()` and no gradient inside; the previous train/eval state is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class Unavailable(Exception):
    """Raised by a protocol that this model or this data cannot serve. The message says what is missing
    and what would serve it; the suite logs it and report.md lists it, so no protocol is dropped silently."""


def column(dataset: PairDataset, name: str) -> list | None:
    """A column of the split as a Python list (None if absent): `PairDataset.column`, read once per dataset.
    `datasets` returns lazy columns whose every row access goes through Arrow (~85 us); the protocols
    index rows many times, so they read plain lists."""
    return dataset.column(name)


def required_column(dataset: PairDataset, name: str) -> list:
    """`column` for a column the protocol cannot do without: `Unavailable` when the data lacks it."""
    values = dataset.column(name)
    if values is None:
        raise Unavailable(f"the data has no `{name}` column")
    return values


@dataclass
class Corruption:
    """A corruption of one modality at one level (see `mmbench.metrics.robustness`).

    images: (batch, generator) -> batch, applied to each collated image batch;
    texts: (texts, rng) -> texts, applied to the strings before tokenisation.
    """

    name: str
    level: float
    images: Callable[[Batch, torch.Generator], Batch] | None = None
    texts: Callable[[list[str], np.random.Generator], list[str]] | None = None


class Inputs:
    """Batches of one split for evaluation: images by row, texts by string, optionally corrupted.

    Randomness of a corruption is seeded once per `Inputs`, and protocols visit their inputs in a
    fixed order, so a corrupted evaluation is as deterministic as a clean one.
    """

    def __init__(
        self,
        dataset: PairDataset,
        tokenizer,
        device: torch.device | str = "cpu",
        corruption: Corruption | None = None,
        seed: int = 0,
        *,
        answers: Sequence[str] = (),
        counterfactuals: Callable | None = None,
        zeroshot_classes: Callable | None = None,
        t2i_oracle: Callable | None = None,
    ):
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.answers = list(answers)  # the model's answer vocabulary (index -> string), for VQA
        self.counterfactuals = counterfactuals  # the data's counterfactual renderer (Shapes), else None
        self.zeroshot_classes = zeroshot_classes  # the data's zero-shot classes (Shapes' objects), else None
        self.t2i_oracle = t2i_oracle  # () -> the data's scene oracle (Shapes: mmbench.t2i.SceneOracle), else None
        self.collate = Collator(tokenizer, num_answers=0)
        self.pad_id = int((tokenizer.padding or {}).get("pad_id", 0))
        self.device = torch.device(device)
        self.corruption = corruption
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def caption_delimiters(self) -> tuple[int, int]:
        """The ids that open and close every tokenised text (e.g. [CLS] / [SEP]): an LM's start and stop."""
        ids = self.tokenizer.encode("").ids
        if len(ids) < 2:
            raise ValueError("the tokenizer adds no start / end tokens; captioning needs both")
        return ids[0], ids[-1]

    def images(self, rows: Sequence[int]) -> Batch:
        """Image batch (pixel_values, image_id, regions if any) of the given split rows."""
        ds = self.dataset
        boxes, labels = column(ds, "boxes"), column(ds, "labels")
        feats = getattr(ds, "region_feats", None)
        items = []
        for r in map(int, rows):  # a list of per-image items for the collator (ragged region lists)
            item = {"image": ds.images[r], "image_id": ds.image_ids[r]}
            if boxes is not None:
                item["boxes"] = boxes[r]
                if labels is not None:
                    item["labels"] = labels[r]
                if feats is not None:
                    item["region_feats"] = feats[r]["region_feats"]
            items.append(item)
        return self.image_items(items)

    def image_items(self, items: list[dict]) -> Batch:
        """Image batch of items {"image", "image_id"[, "boxes", "labels"]} (e.g. rendered counterfactuals)."""
        batch = self.collate([{**it, "caption": ""} for it in items])
        batch.pop("input_ids")
        batch.pop("attention_mask")
        if self.corruption is not None and self.corruption.images is not None:
            batch = self.corruption.images(batch, self.generator)
        return to_device(batch, self.device)

    def texts(self, texts: Sequence[str], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) (B, T) of the strings, padded to the longest or to `pad_to`."""
        texts = list(texts)
        if self.corruption is not None and self.corruption.texts is not None:
            texts = self.corruption.texts(texts, self.rng)
        enc = self.tokenizer.encode_batch(texts)
        T = max([len(e.ids) for e in enc] + [pad_to or 0])
        ids = torch.full((len(enc), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(enc), T, dtype=torch.long)
        for i, e in enumerate(enc):  # ragged token lists -> padded tensors (tokenisation, not a model hot path)
            n = sum(e.attention_mask)
            ids[i, :n] = torch.tensor(e.ids[:n])
            mask[i, :n] = 1
        return ids.to(self.device), mask.to(self.device)


@torch.no_grad()
def encode_images(model, inputs: Inputs, rows: Sequence[int], batch_size: int) -> Features:
    """Every image of `rows` encoded once, in order; features kept on the evaluation device."""
    parts = [model.encode_image(inputs.images(rows[s])) for s in chunks(len(rows), batch_size)]
    return _cat_padded(parts)


@torch.no_grad()
def encode_texts(model, inputs: Inputs, texts: Sequence[str], batch_size: int) -> Features:
    """Every text encoded once, in order, all padded to one length (so any rows can be fused later)."""
    parts = [model.encode_text(*inputs.texts(texts[s])) for s in chunks(len(texts), batch_size)]
    return _cat_padded(parts)


def _cat_padded(parts: list[Features]) -> Features:
    """Concatenate feature batches whose token counts may differ (pads tokens with masked zeros)."""
    N = max(p.tokens.shape[1] for p in parts)
    tokens, masks = [], []
    for p in parts:
        pad = N - p.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(p.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(p.mask, (0, pad), value=False))
    return Features(torch.cat(tokens), torch.cat(masks), torch.cat([p.pooled for p in parts]))


def pair_scorer(module) -> Objective | None:
    """The objective that scores (image, text) pairs best (highest `pair_score_rank`), or None."""
    scorers = [o for o in module.objectives.values() if o.pair_score_rank > 0]
    return max(scorers, key=lambda o: o.pair_score_rank) if scorers else None


def embedder(module) -> Embedder | None:
    """The objective that embeds text and image into one space (ITC), or None."""
    return next((o for o in module.objectives.values() if isinstance(o, Embedder)), None)


ONE_IMAGE = ("pixel_values",)


def encode_image_field(model, inputs: Inputs, rows: Sequence[int], field: str, batch_size: int) -> Features:
    """The images of split rows behind batch field `field`, each encoded once: `pixel_values` as every
    protocol encodes images (`common.encode_images`, regions included), `pixel_values_right` (the right image
    of a pair) from the split's `pixels_right`, with the same corruption when one is applied."""
    if field == "pixel_values":
        return encode_images(model, inputs, rows, batch_size)
    if field != "pixel_values_right":
        raise ValueError(f"no images for the batch field '{field}'; image fields: pixel_values, pixel_values_right")
    dataset = inputs.dataset
    if dataset.images_right is None:
        raise Unavailable("the data has no right image (column pixels_right)")
    parts = []
    for s in chunks(len(rows), batch_size):
        items = [{"image": dataset.images_right[r], "image_id": dataset.image_ids[r]} for r in map(int, rows[s])]
        parts.append(model.encode_image(inputs.image_items(items)))  # pixel_values = the right images
    return Features.cat(*parts)


def example_batches(
    model, inputs: Inputs, texts: list, n: int, batch_size: int, fields: Sequence[str] = ONE_IMAGE
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor, list[Features]]]:
    """Every (image row, text index) of the first n rows, in order, in batches: (the pairs, text ids (b, T),
    mask (b, T), the features of each pair's images, one per image field (b, ...)). Images are encoded once,
    in chunks of rows, and their features repeated for their texts."""
    for s in chunks(n, batch_size):  # rows in chunks; all texts of those rows at once
        rows = list(range(s.start, s.stop))
        images = [encode_image_field(model, inputs, rows, field, batch_size) for field in fields]  # each once
        local = [(r - s.start, k) for r in rows for k in range(len(texts[r]))]
        if not local:
            continue
        idx = torch.tensor([i for i, _ in local], device=inputs.device)
        for c in chunks(len(local), batch_size):
            ids, mask = inputs.texts([texts[rows[i]][k] for i, k in local[c]])
            yield [(rows[i], k) for i, k in local[c]], ids, mask, [image.index(idx[c]) for image in images]
