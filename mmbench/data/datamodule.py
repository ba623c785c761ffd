"""LightningDataModule turning an image-text dataset into the batch contract of docs/design.md.

The source is any callable returning `(datasets.DatasetDict, cache_dir)` whose splits have the
canonical columns of `mmbench.data.columns` (`COLUMNS`: `image_id`, `pixels` + `image_size`,
`captions`, and optionally questions / answers, caption labels, regions, claims). The built-in Shapes
benchmark (`mmbench.data.shapes.build_shapes`) and real data (`mmbench.data.hf.build_hf`) are such
sources.

Every (image, caption k) pair is one example (`mmbench.data.dataset.PairDataset`); its question is
question k mod #questions of the image. The collator (`mmbench.data.collate.Collator`) stacks examples
into the batch fields of `mmbench.data.columns.FIELDS` (name, dtype, shape, padding, the columns each
is made from); the train loader (`mmbench.data.loaders`) shuffles by (seed, epoch) and resumes within
an epoch.

The answer vocabulary is the train answers (all of them, sorted; or the `max_answers` most frequent).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mmbench.data import tokenizer as tokenization
from mmbench.data.augment import Augment, AugmentedPairs
from mmbench.data.collate import Collator
from mmbench.data.dataset import EAGER_PIXEL_BYTES, PairDataset
from mmbench.data.errors import DataError
from mmbench.data.loaders import EpochShuffleSampler, ResumableLoader

# imported from here by callers
__all__ = [
    "EAGER_PIXEL_BYTES",
    "SPLITS",
    "Collator",
    "DataError",
    "DataInfo",
    "EpochShuffleSampler",
    "PairDataset",
    "ResumableLoader",
    "VLDataModule",
]

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
    # test accuracy of a blind model: each question answered with its most frequent train answer
    # (the majority answer for questions unseen in training); VQA above this reads the image
    question_prior_baseline: float | None = None
    question_prior_by_type: dict[str, float] = field(default_factory=dict)  # question type -> blind accuracy
    num_labels: int = 0  # classes of `caption_labels` (batch key `labels`), 0 = none
    label_names: list[str] = field(default_factory=list)
    skipped_images: int = 0  # unreadable images skipped by the source (data.source.bad_images=skip)

    @classmethod
    def of_vocab(cls, vocab_size: int, *, max_text_len: int, image_size: int, **fields) -> DataInfo:
        """What the data would tell the builder, without data or a tokenizer: a vocabulary of
        `vocab_size` ids whose special ids are the trained tokenizer's (`SPECIAL_TOKENS`, ids 0..6).
        For counting parameters, building a checkpoint's model, benchmarks and tests."""
        ids = {token: i for i, token in enumerate(tokenization.SPECIAL_TOKENS)}
        return cls(
            vocab_size=vocab_size,
            pad_id=ids[tokenization.PAD],
            mask_id=ids[tokenization.MASK],
            bos_id=ids[tokenization.BOS],
            eos_id=ids[tokenization.EOS],
            special_ids=list(ids.values()),
            max_text_len=max_text_len,
            image_size=image_size,
            **fields,
        )

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    def baseline_metrics(self) -> dict[str, float]:
        """The blind VQA baselines of the test split as metrics (`test/vqa/...`), those the data has; per
        question type named as `vqa/acc_<type>` is (`type_suffix`: "yes/no" -> "yes_no")."""
        from mmbench.metrics.vqa import type_suffix

        values = {
            "test/vqa/majority_baseline": self.majority_baseline,
            "test/vqa/question_prior_baseline": self.question_prior_baseline,
            **{f"test/vqa/question_prior_baseline_{type_suffix(t)}": v for t, v in self.question_prior_by_type.items()},
        }
        return {k: float(v) for k, v in values.items() if v is not None}


class VLDataModule(pl.LightningDataModule):
    """Data of a run: the source's splits, the tokenizer, the answer / label vocabularies and loaders.

    tokenizer: {kind: trained | hf, name_or_path}: WordPiece trained on the train text (vocab_size),
    or a pretrained HF tokenizer (conf/data/tokenizer/*.yaml). max_answers caps the VQA answer
    vocabulary to the most frequent train answers (VQAv2: 3129); None keeps all of them.
    offline: never reach the HF hub (tokenizers by hub id load from the local cache only).
    root: the benchmark's directory of a release reader (`data.root`, conf/data/release.yaml); the source
    reads it (`data.source.root` interpolates it), the module only carries it; so with `num_proc`, the
    threads converting a source's images (`data.num_proc`, read as `data.source.num_proc`).
    """

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
        tokenizer: dict | None = None,
        max_answers: int | None = None,
        offline: bool = False,
        counterfactuals: Callable | None = None,
        zeroshot_classes: Callable | None = None,
        t2i_oracle: Callable | None = None,
        root: str | None = None,
        num_proc: int | None = None,
        augment: dict | None = None,
    ):
        super().__init__()
        self.source = source
        try:  # training images only (mmbench/data/augment.py); None when it changes nothing
            self.augment = Augment.from_node(augment)
        except ValueError as err:
            raise DataError(str(err)) from None
        # what the data offers the diagnostics protocol: render(columns, positive, negative, kind,
        # image_size) -> counterfactual (image, boxes, labels) | None (Shapes: mmbench/data/counterfactual.py)
        self.counterfactuals = counterfactuals
        # what it offers the zeroshot protocol: classes(split, fields, n) -> (classes, labels per image)
        # (Shapes: its objects' attributes, mmbench/data/object_classes.py)
        self.zeroshot_classes = zeroshot_classes
        # ... and the t2i protocol: () -> an oracle that reads generated images into scenes (Shapes: mmbench/t2i/)
        self.t2i_oracle = t2i_oracle
        self.image_size = image_size
        self.num_region_labels = num_region_labels
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_text_len = max_text_len
        self.vocab_size = vocab_size
        self.seed = seed
        tokenizer = dict(tokenizer or {})
        self.tokenizer_kind = str(tokenizer.pop("kind", "trained"))
        self.tokenizer_name = tokenizer.pop("name_or_path", None)
        if tokenizer:
            raise DataError(f"data.tokenizer: unknown key(s) {sorted(tokenizer)}; valid keys: kind, name_or_path")
        if max_answers is not None and int(max_answers) < 1:
            raise DataError(f"data.max_answers={max_answers} must be >= 1 (or null for every train answer)")
        self.max_answers = max_answers
        self.offline = offline
        self.datasets: dict[str, PairDataset] = {}
        self.info: DataInfo | None = None
        self.stats: dict = {}  # the source's conversion stats (rows, skipped images), when it keeps them
        self.cache_dir = None  # where the source keeps the prepared dataset (set once it is read)

    def prepare_data(self) -> None:
        """Build (or load from cache) the dataset and the tokenizer."""
        self._load()

    def _load(self):
        dsd, cache_dir = self.source()
        self.cache_dir = cache_dir
        missing = [s for s in SPLITS if s not in dsd]
        if missing:
            raise DataError(f"dataset has no split(s) {missing}; it has {list(dsd)}")
        for name, split in dsd.items():
            if len(split) == 0:
                raise DataError(f"split '{name}' of the dataset in {cache_dir} is empty")
            if not any(len(captions) for captions in split["captions"]):  # 0 pairs: 0 steps, then evaluation fails
                raise DataError(
                    f"every caption of split '{name}' of the dataset in {cache_dir} is empty (column "
                    f"'captions'): there is no image-text pair to train or evaluate on"
                )
        train = dsd["train"]
        texts = lambda: (
            t
            for col in ("captions", "questions", "answers")
            if col in train.column_names
            for row in train[col]
            for t in row
        )
        try:
            tok, special = tokenization.build(
                self.tokenizer_kind,
                cache_dir=cache_dir,
                texts=texts,
                vocab_size=self.vocab_size,
                max_len=self.max_text_len,
                name_or_path=self.tokenizer_name,
                offline=self.offline,
            )
        except tokenization.TokenizerError as err:
            raise DataError(str(err)) from err
        from mmbench.data.hf import read_stats

        self.stats = read_stats(cache_dir)
        return dsd, tok, special

    def check_train_batch(self) -> None:
        """Refuse (DataError) a batch larger than the training split, once the split is read: the loader keeps its
        last partial batch, so every step would hold the whole split. Config validation refuses it from the config
        where the config says the split's size (Shapes); a source read from files or the hub knows it only now."""
        examples = len(self.datasets["train"])
        if self.batch_size > examples:
            raise DataError(
                f"data.batch_size={self.batch_size} is larger than the training split of the dataset in "
                f"{self.cache_dir}: {examples} (image, caption) examples, so every step would hold the whole split; "
                f"use data.batch_size <= {examples}"
            )

    def answer_vocabulary(self, train) -> list[str]:
        """Train answers, sorted; with max_answers, the most frequent ones (ties by name), sorted."""
        counts = Counter(a for row in train["answers"] for a in row)
        if self.max_answers is not None and len(counts) > int(self.max_answers):
            return sorted(sorted(counts, key=lambda a: (-counts[a], a))[: int(self.max_answers)])
        return sorted(counts)

    def setup(self, stage: str | None = None) -> None:
        if self.info is not None:
            return
        dsd, tok, special = self._load()
        train = dsd["train"]
        answers, majority, prior = [], None, None
        prior_by_type: dict[str, float] = {}
        counts = Counter(a for row in train["answers"] for a in row) if "answers" in train.column_names else Counter()
        if counts:  # a column of empty lists (e.g. Shapes with questions_per_image=0) is no VQA data
            answers = self.answer_vocabulary(train)
            top = counts.most_common(1)[0][0]
            majority = self._majority_baseline(dsd["test"], top)
            if "questions" in train.column_names:
                prior, prior_by_type = self._question_prior(train, dsd["test"], top)
        size = int(train[0]["image_size"])
        if size != self.image_size:
            raise DataError(f"the dataset's images are {size}x{size} but data.image_size={self.image_size}")
        labels = [l for row in train["labels"] for l in row] if "labels" in train.column_names else []
        classes = [c for row in train["caption_labels"] for c in row] if "caption_labels" in train.column_names else []
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.datasets = {name: PairDataset(split, self.answer_index) for name, split in dsd.items()}
        self.tokenizer = tok
        widths = [len(f) for d in self.datasets.values() if d.facts is not None for f in d.facts]
        self.collate = Collator(tok, len(answers), facts_width=max(widths, default=0))
        label_names = list(self.stats.get("label_names") or [])
        self.info = DataInfo(
            vocab_size=tok.get_vocab_size(),
            pad_id=special.pad,
            mask_id=special.mask,
            bos_id=special.bos,
            eos_id=special.eos,
            special_ids=list(special.all),
            max_text_len=self.max_text_len,
            image_size=size,
            answers=answers,
            num_region_labels=self.num_region_labels or ((max(labels) + 1) if labels else 0),
            majority_baseline=majority,
            question_prior_baseline=prior,
            question_prior_by_type=prior_by_type,
            num_labels=max(len(label_names), (max(classes) + 1) if classes else 0),
            label_names=label_names,
            skipped_images=int(self.stats.get("skipped_examples", 0)),
        )

    @staticmethod
    def _blind_scores(test, guesses: list[list[str]]) -> list[float]:
        """Scores of answers given without the image, one per (row, question) in row order, scored as the vqa
        protocol scores the model (the official VQA accuracy against all_answers, else exact match), so the
        baselines and `vqa/acc` are on one scale."""
        from mmbench.metrics.vqa import vqa_score  # the one definition of VQA accuracy (a pure function)

        column = "all_answers" if "all_answers" in test.column_names else "answers"
        return [vqa_score(g, ans) for row, gs in zip(test[column], guesses) for ans, g in zip(row, gs)]

    @classmethod
    def _blind_accuracy(cls, test, guesses: list[list[str]]) -> float | None:
        scores = cls._blind_scores(test, guesses)
        return float(np.mean(scores)) if scores else None

    @classmethod
    def _majority_baseline(cls, test, top: str) -> float | None:
        """Test accuracy of always answering `top`."""
        return cls._blind_accuracy(test, [[top] * len(row) for row in test["answers"]])

    @staticmethod
    def _question_prior_guesses(train, test, top: str) -> list[list[str]]:
        """Each test question answered with its most frequent train answer (`top` for questions never
        asked in training): the language-only baseline of VQA."""
        by_question: dict[str, Counter] = {}
        for qs, ans in zip(train["questions"], train["answers"]):
            for q, a in zip(qs, ans):
                by_question.setdefault(q, Counter())[a] += 1
        guess = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
        return [[guess.get(q, top) for q in qs] for qs in test["questions"]]

    @classmethod
    def _question_prior(cls, train, test, top: str) -> tuple[float | None, dict[str, float]]:
        """Test accuracy of the question prior (`_question_prior_guesses`): overall, and per question
        type (`question_types`) as `vqa/acc_<type>` is reported (empty without question types)."""
        scores = cls._blind_scores(test, cls._question_prior_guesses(train, test, top))
        by_type: dict[str, list[float]] = {}
        if "question_types" in test.column_names:
            for t, score in zip((t for row in test["question_types"] for t in row), scores):
                by_type.setdefault(t, []).append(score)
        overall = float(np.mean(scores)) if scores else None
        return overall, {t: float(np.mean(v)) for t, v in sorted(by_type.items())}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # the shuffle order is a function of (seed, epoch) only, so a run resumed from an epoch-end
        # checkpoint continues with the next epoch's order (Lightning calls sampler.set_epoch), and one
        # resumed mid-epoch with the rest of that epoch's order (ResumableLoader);
        # the loader's own generator only seeds workers, from the seed as well
        augment = self.augment if shuffle else None  # the training split's images only
        dataset = self.datasets[split] if augment is None else AugmentedPairs(self.datasets[split], augment, self.seed)
        sampler = EpochShuffleSampler(len(dataset), self.seed, keys=augment is not None) if shuffle else None
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=self.collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._on_cuda(),  # page-locked host batches copy to the GPU asynchronously
        )

    def _on_cuda(self) -> bool:
        """Whether the Trainer this datamodule is attached to (if any) runs on a CUDA device."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
