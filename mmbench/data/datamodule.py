"""LightningDataModule turning an image-text dataset into the batch contract of DESIGN.md.

The source is any callable returning `(datasets.DatasetDict, cache_dir)` whose splits have the
canonical columns: `image_id`, `pixels` (raw HWC uint8 bytes) + `image_size`, `captions` (list),
and optionally `questions` / `answers` (lists), `boxes` / `labels` (per object). The built-in
Shapes benchmark (`mmbench.data.shapes.build_shapes`) is one such source.

Every (image, caption k) pair is one example; its question is question k mod #questions of the
image. A batch holds:
  input_ids, attention_mask (B, T)         caption tokens
  question_ids, question_mask (B, Tq)      question tokens (when the data has questions)
  pixel_values (B, 3, H, W)                normalised to [-1, 1]
  image_id (B,)                            equal ids = same image (positives for ITC)
  answer_scores (B, A), answer (B,)        VQA soft targets and the answer index (-1 = not in vocab)
  region_boxes (B, R, 4), region_labels (B, R), region_mask (B, R)   objects (when the data has boxes)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmbench.data import tokenizer as tokenization

SPLITS = ("train", "val", "test")


@dataclass
class DataInfo:
    """What the model and objectives need to know about the data (sizes and special ids)."""

    vocab_size: int
    pad_id: int
    mask_id: int
    bos_id: int
    eos_id: int
    special_ids: list[int]
    max_text_len: int
    image_size: int
    answers: list[str] = field(default_factory=list)
    num_region_labels: int = 0
    majority_baseline: float | None = None  # test accuracy of always answering the most frequent train answer

    @property
    def num_answers(self) -> int:
        return len(self.answers)


class PairDataset(Dataset):
    """(image, caption k, question k mod Q) examples of one split, held in memory as numpy."""

    def __init__(self, split, answer_index: dict[str, int]):
        size = int(split[0]["image_size"]) if len(split) else 0
        self.images = np.frombuffer(b"".join(split["pixels"]), dtype=np.uint8).reshape(len(split), size, size, 3)
        self.image_ids = np.asarray(split["image_id"], dtype=np.int64)
        self.captions = split["captions"]
        cols = split.column_names
        self.questions = split["questions"] if "questions" in cols else None
        self.answers = split["answers"] if "answers" in cols else None
        self.boxes = split["boxes"] if "boxes" in cols else None
        self.labels = split["labels"] if "labels" in cols else None
        self.answer_index = answer_index
        self.split = split  # the Arrow table, for evaluation-only columns (e.g. matching diagnostics)
        # flat index -> (image row, caption index)
        counts = np.array([len(c) for c in self.captions])
        self.rows = np.repeat(np.arange(len(counts)), counts)
        self.caps = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=int)

    def __len__(self) -> int:
        return len(self.rows)

    def image_item(self, r: int, text: str) -> dict:
        """Image row r paired with an arbitrary text (for evaluation protocols)."""
        item = {"image": self.images[r], "image_id": self.image_ids[r], "caption": text}
        if self.boxes is not None:
            item["boxes"], item["labels"] = self.boxes[r], self.labels[r]
        return item

    def __getitem__(self, i: int) -> dict:
        r, k = int(self.rows[i]), int(self.caps[i])
        item = self.image_item(r, self.captions[r][k])
        if self.questions is not None and self.questions[r]:
            q = k % len(self.questions[r])
            item["question"] = self.questions[r][q]
            item["answer"] = self.answer_index.get(self.answers[r][q], -1)
        return item


class Collator:
    """Tokenises, pads to the longest item and stacks a list of examples into the batch contract."""

    def __init__(self, tokenizer, num_answers: int):
        self.tokenizer = tokenizer
        self.num_answers = num_answers

    def _text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        images = torch.from_numpy(np.stack([it["image"] for it in items]))  # (B, H, W, 3) uint8
        batch = {
            "pixel_values": images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0),  # (B, 3, H, W) in [-1, 1]
            "image_id": torch.tensor([int(it["image_id"]) for it in items], dtype=torch.long),
        }
        batch["input_ids"], batch["attention_mask"] = self._text([it["caption"] for it in items])
        if "question" in items[0]:
            batch["question_ids"], batch["question_mask"] = self._text([it["question"] for it in items])
            answer = torch.tensor([it["answer"] for it in items], dtype=torch.long)
            scores = torch.zeros(len(items), self.num_answers)
            known = answer >= 0
            scores[known.nonzero().squeeze(1), answer[known]] = 1.0
            batch["answer"], batch["answer_scores"] = answer, scores
        if "boxes" in items[0]:
            R = max(1, max(len(it["boxes"]) for it in items))
            boxes = torch.zeros(len(items), R, 4)
            labels = torch.full((len(items), R), -1, dtype=torch.long)
            for i, it in enumerate(items):  # ragged per-object lists -> padded tensors (collation, not a hot path)
                n = len(it["boxes"])
                if n:
                    boxes[i, :n] = torch.tensor(it["boxes"], dtype=torch.float32)
                    labels[i, :n] = torch.tensor(it["labels"], dtype=torch.long)
            batch["region_boxes"], batch["region_labels"], batch["region_mask"] = boxes, labels, labels >= 0
        return batch


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation per epoch that depends on (seed, epoch) only; `set_epoch` picks the epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        (state,) = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class VLDataModule(pl.LightningDataModule):
    def __init__(
        self,
        source: Callable[[], tuple],
        image_size: int,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_text_len: int = 32,
        vocab_size: int = 1000,
        seed: int = 0,
        num_region_labels: int | None = None,
    ):
        super().__init__()
        self.source = source
        self.image_size = image_size
        self.num_region_labels = num_region_labels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_text_len = max_text_len
        self.vocab_size = vocab_size
        self.seed = seed
        self.datasets: dict[str, PairDataset] = {}
        self.info: DataInfo | None = None

    def prepare_data(self) -> None:
        """Build (or load from cache) the dataset and the tokenizer."""
        self._load()

    def _load(self):
        dsd, cache_dir = self.source()
        missing = [s for s in SPLITS if s not in dsd]
        if missing:
            raise ValueError(f"dataset has no split(s) {missing}; it has {list(dsd)}")
        for name, split in dsd.items():
            if len(split) == 0:
                raise ValueError(f"split '{name}' of the dataset in {cache_dir} is empty")
        train = dsd["train"]
        texts = lambda: (t for col in ("captions", "questions", "answers") if col in train.column_names for row in train[col] for t in row)  # noqa: E731
        tok = tokenization.load_or_train(Path(cache_dir) / f"tokenizer-{self.vocab_size}.json", texts(), self.vocab_size)
        return dsd, tokenization.configure(tok, self.max_text_len)

    def setup(self, stage: str | None = None) -> None:
        if self.info is not None:
            return
        dsd, tok = self._load()
        train = dsd["train"]
        answers, majority = [], None
        if "answers" in train.column_names:
            counts = Counter(a for row in train["answers"] for a in row)
            answers = sorted(counts)
            top = counts.most_common(1)[0][0]
            test_answers = [a for row in dsd["test"]["answers"] for a in row]
            majority = float(np.mean([a == top for a in test_answers])) if test_answers else None
        size = int(train[0]["image_size"])
        if size != self.image_size:
            raise ValueError(f"the dataset's images are {size}x{size} but data.image_size={self.image_size}")
        labels = [l for row in train["labels"] for l in row] if "labels" in train.column_names else []  # noqa: E741
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.datasets = {name: PairDataset(split, self.answer_index) for name, split in dsd.items()}
        self.tokenizer = tok
        self.collate = Collator(tok, len(answers))
        special = [tok.token_to_id(t) for t in tokenization.SPECIAL_TOKENS]
        self.info = DataInfo(
            vocab_size=tok.get_vocab_size(),
            pad_id=tok.token_to_id(tokenization.PAD),
            mask_id=tok.token_to_id(tokenization.MASK),
            bos_id=tok.token_to_id(tokenization.BOS),
            eos_id=tok.token_to_id(tokenization.EOS),
            special_ids=special,
            max_text_len=self.max_text_len,
            image_size=size,
            answers=answers,
            num_region_labels=self.num_region_labels or ((max(labels) + 1) if labels else 0),
            majority_baseline=majority,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # the shuffle order is a function of (seed, epoch) only, so a run resumed from an epoch-end
        # checkpoint continues with the next epoch's order (Lightning calls sampler.set_epoch);
        # the loader's own generator only seeds workers, from the seed as well
        sampler = EpochShuffleSampler(len(self.datasets[split]), self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
