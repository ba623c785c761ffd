"""LightningDataModule turning an image-text dataset into the batch contract of docs/design.md.

The source is any callable returning `(datasets.DatasetDict, cache_dir)` whose splits have the
canonical columns: `image_id`, `pixels` (raw HWC uint8 bytes) + `image_size`, `captions` (list),
and optionally `questions` / `answers` (lists; `answers` holds one answer per question),
`all_answers` (list of lists: every annotator answer per question, VQAv2), `question_types`,
`caption_labels` (one class index per caption, -1 = unknown), `boxes` / `labels` (per object) and
`region_feats` ((R, F) precomputed region features), `caption_claims` (one canonical claim per caption,
"" = unknown) with `image_facts` (the claims true of the image). The built-in Shapes benchmark
(`mmbench.data.shapes.build_shapes`) and real data (`mmbench.data.hf.build_hf`) are such sources.

Every (image, caption k) pair is one example; its question is question k mod #questions of the
image. A batch holds:
  input_ids, attention_mask (B, T)         caption tokens
  question_ids, question_mask (B, Tq)      question tokens (when the data has questions)
  pixel_values (B, 3, H, W)                normalised to [-1, 1] (pretrained encoders re-normalise)
  image_id (B,)                            equal ids = same image (positives for ITC)
  answer_scores (B, A), answer (B,)        VQA targets and the answer index (-1 = not in vocab):
                                           one-hot, or min(1, #annotators / 3) with `all_answers`
  labels (B,)                              class of the caption (when the data has `caption_labels`)
  region_boxes (B, R, 4), region_mask (B, R)   objects (when the data has boxes), with
  region_labels (B, R) and / or region_feats (B, R, F) when the data has them
  text_claim (B,), image_facts (B, F)      int64 codes (`claim_code`) of the caption's claim (0 = unknown)
                                           and of the image's facts, padded with 0 to the data's widest
                                           row (when it has `caption_claims` / `image_facts`);
                                           `claims_true(image_facts, text_claim)` (B, B): text j true of image i

The answer vocabulary is the train answers (all of them, sorted; or the `max_answers` most frequent).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmbench.data import tokenizer as tokenization
from mmbench.data.claims import claim_code
from mmbench.data.errors import DataError  # noqa: F401 - raised here, and imported from here by callers
from mmbench.sweep import CheckpointError

SPLITS = ("train", "val", "test")
EAGER_PIXEL_BYTES = 1 << 30  # splits with fewer pixel bytes are decoded into memory; larger ones read rows lazily
VQA_ANNOTATORS = 3  # VQAv2 soft score of an answer: min(1, #annotators who gave it / 3)


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

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    def baseline_metrics(self) -> dict[str, float]:
        """The blind VQA baselines of the test split as metrics (`test/vqa/...`), those the data has."""
        values = {
            "test/vqa/majority_baseline": self.majority_baseline,
            "test/vqa/question_prior_baseline": self.question_prior_baseline,
            **{f"test/vqa/question_prior_baseline_{t}": v for t, v in self.question_prior_by_type.items()},
        }
        return {k: float(v) for k, v in values.items() if v is not None}


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
        self.captions = split["captions"]
        cols = split.column_names
        self.questions = split["questions"] if "questions" in cols else None
        self.answers = split["answers"] if "answers" in cols else None
        self.all_answers = split["all_answers"] if "all_answers" in cols else None
        self.caption_labels = split["caption_labels"] if "caption_labels" in cols else None
        self.boxes = split["boxes"] if "boxes" in cols else None
        self.labels = split["labels"] if "labels" in cols else None
        self.region_feats = (
            split.select_columns(["region_feats"]).with_format("numpy") if "region_feats" in cols else None
        )
        has_claims = "caption_claims" in cols and "image_facts" in cols
        self.claims = [[claim_code(c) for c in row] for row in split["caption_claims"]] if has_claims else None
        self.facts = [[claim_code(f) for f in row] for row in split["image_facts"]] if has_claims else None
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
            item["boxes"] = self.boxes[r]
            if self.labels is not None:
                item["labels"] = self.labels[r]
            if self.region_feats is not None:
                item["region_feats"] = self.region_feats[int(r)]["region_feats"]
        return item

    def __getitem__(self, i: int) -> dict:
        r, k = int(self.rows[i]), int(self.caps[i])
        item = self.image_item(r, self.captions[r][k])
        if self.caption_labels is not None:
            item["label"] = self.caption_labels[r][k]
        if self.claims is not None:
            item["claim"], item["facts"] = self.claims[r][k], self.facts[r]
        if self.questions is not None and self.questions[r]:
            q = k % len(self.questions[r])
            item["question"] = self.questions[r][q]
            item["answer"] = self.answer_index.get(self.answers[r][q], -1)
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


class Collator:
    """Tokenises, pads to the longest item and stacks a list of examples into the batch contract."""

    def __init__(self, tokenizer, num_answers: int, facts_width: int = 0):
        self.tokenizer = tokenizer
        self.num_answers = num_answers
        self.facts_width = facts_width  # widest `image_facts` row of the data

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
        if "claim" in items[0]:
            batch["text_claim"] = torch.tensor([it["claim"] for it in items], dtype=torch.long)
            facts = torch.zeros(len(items), self.facts_width, dtype=torch.long)  # fixed width: gatherable under DDP
            for i, it in enumerate(items):  # ragged lists -> padded tensor (collation, not a hot path)
                facts[i, : len(it["facts"])] = torch.tensor(it["facts"], dtype=torch.long)
            batch["image_facts"] = facts
        if "label" in items[0]:
            batch["labels"] = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
        if "question" in items[0]:
            batch["question_ids"], batch["question_mask"] = self._text([it["question"] for it in items])
            answer = torch.tensor([it["answer"] for it in items], dtype=torch.long)
            scores = torch.zeros(len(items), self.num_answers)
            if "answer_soft" in items[0]:  # several annotator answers: VQAv2 soft scores
                for i, it in enumerate(items):
                    for a, score in it["answer_soft"]:
                        scores[i, a] = score
            else:
                known = answer >= 0
                scores[known.nonzero().squeeze(1), answer[known]] = 1.0
            batch["answer"], batch["answer_scores"] = answer, scores
        if "boxes" in items[0]:
            B, R = len(items), max(1, max(len(it["boxes"]) for it in items))
            boxes = torch.zeros(B, R, 4)
            mask = torch.zeros(B, R, dtype=torch.bool)
            labels = torch.full((B, R), -1, dtype=torch.long) if "labels" in items[0] else None
            feats = None
            if "region_feats" in items[0]:
                feats = torch.zeros(B, R, int(np.asarray(items[0]["region_feats"]).shape[-1]))
            for i, it in enumerate(items):  # ragged per-object lists -> padded tensors (collation, not a hot path)
                n = len(it["boxes"])
                if n:
                    boxes[i, :n] = torch.tensor(np.asarray(it["boxes"], dtype=np.float32))
                    mask[i, :n] = True
                    if labels is not None:
                        labels[i, :n] = torch.tensor(it["labels"], dtype=torch.long)
                    if feats is not None:
                        feats[i, :n] = torch.from_numpy(np.asarray(it["region_feats"], dtype=np.float32))
            batch["region_boxes"], batch["region_mask"] = boxes, mask
            if labels is not None:
                batch["region_labels"] = labels
            if feats is not None:
                batch["region_feats"] = feats
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


class ResumableLoader(DataLoader):
    """The train DataLoader, resumable within an epoch through Lightning's stateful-loader protocol:
    Lightning saves `state_dict()` in every checkpoint; resuming within an epoch, `load_state_dict` is
    called before the first batch is drawn (by `mmbench.callbacks.MidEpochResume`). Lightning itself
    does not fast-forward a map-style loader.

    The state is the number of batches yielded in the current epoch (Lightning's own loader does not
    prefetch a sized loader, so that is the number trained on when a checkpoint is written). After
    `load_state_dict` the next iteration drops that many batches of indices from the batch sampler,
    so no data is read for them and the epoch goes on with the batches an uninterrupted run would see:
    the order is a function of (seed, epoch) (EpochShuffleSampler), and loading an example is
    deterministic, so this holds with worker processes too. A checkpoint from other data settings
    (batch size, batches per epoch, epoch) is refused.
    """

    _position = 0  # batches yielded in the current epoch
    _skip = 0  # batches the next iteration leaves out (set by load_state_dict)
    _skip_epoch = 0  # the epoch they belong to

    def __iter__(self):
        # a generator: nothing below runs before the first batch is drawn, when Lightning has set the
        # sampler's epoch and the resume has set _skip (a DataLoader's worker processes would otherwise
        # start drawing indices as soon as `iter()` is called)
        epoch = int(getattr(self.sampler, "epoch", 0))
        if self._skip and epoch != self._skip_epoch:
            raise CheckpointError(
                f"the checkpoint stopped within epoch {self._skip_epoch}, but training resumed "
                f"at epoch {epoch}; delete the run's checkpoints/ to start it afresh"
            )
        self._position = self._skip
        batches = super().__iter__()  # draws its indices from _index_sampler, which leaves out _skip batches
        self._skip = 0
        for batch in batches:
            self._position += 1
            yield batch

    @property
    def _index_sampler(self):
        return _SkipBatches(super()._index_sampler, self)

    def state_dict(self) -> dict:
        return {
            "batches": self._position,
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batch_size": self.batch_size,
            "num_batches": len(self),
        }

    def load_state_dict(self, state: dict) -> None:
        saved, here = (state["batch_size"], state["num_batches"]), (self.batch_size, len(self))
        if saved != here:
            raise CheckpointError(
                f"the checkpoint stopped within an epoch of other data settings (batch size, batches per epoch: "
                f"{saved}; this run: {here}), so this run cannot continue that epoch. Rerun with the settings it "
                "was written with, or delete the run's checkpoints/ to start it afresh"
            )
        self._skip, self._skip_epoch = int(state["batches"]), int(state["epoch"])


class _SkipBatches:
    """The loader's batch sampler, leaving out the loader's first `_skip` batches when iterated (torch's
    worker iterator calls `iter()` on it twice while it is built, so the loader resets `_skip` after)."""

    def __init__(self, batches, loader: ResumableLoader):
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)  # a whole epoch: Lightning counts the resumed epoch's batches itself

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.loader._skip, None)


class VLDataModule(pl.LightningDataModule):
    """Data of a run: the source's splits, the tokenizer, the answer / label vocabularies and loaders.

    tokenizer: {kind: trained | hf, name_or_path}: WordPiece trained on the train text (vocab_size),
    or a pretrained HF tokenizer (conf/data/tokenizer/*.yaml). max_answers caps the VQA answer
    vocabulary to the most frequent train answers (VQAv2: 3129); None keeps all of them.
    offline: never reach the HF hub (tokenizers by hub id load from the local cache only).
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
    ):
        super().__init__()
        self.source = source
        # what the data offers the diagnostics protocol: render(columns, positive, negative, kind,
        # image_size) -> counterfactual (image, boxes, labels) | None (Shapes: mmbench/data/counterfactual.py)
        self.counterfactuals = counterfactuals
        # what it offers the zeroshot protocol: classes(split, fields, n) -> (classes, labels per image)
        # (Shapes: its objects' attributes, mmbench/data/object_classes.py)
        self.zeroshot_classes = zeroshot_classes
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

    def prepare_data(self) -> None:
        """Build (or load from cache) the dataset and the tokenizer."""
        self._load()

    def _load(self):
        dsd, cache_dir = self.source()
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
        )  # noqa: E731
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
        answers, majority, prior, prior_by_type = [], None, None, {}
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
        labels = [l for row in train["labels"] for l in row] if "labels" in train.column_names else []  # noqa: E741
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
        """Scores of answers given without the image, one per (row, question) in row order: exact
        match, or the VQA soft score with all_answers."""
        if "all_answers" in test.column_names:
            return [
                min(1.0, ans.count(g) / VQA_ANNOTATORS)
                for row, gs in zip(test["all_answers"], guesses)
                for ans, g in zip(row, gs)
            ]
        return [float(a == g) for row, gs in zip(test["answers"], guesses) for a, g in zip(row, gs)]

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
        sampler = EpochShuffleSampler(len(self.datasets[split]), self.seed) if shuffle else None
        return (ResumableLoader if shuffle else DataLoader)(
            self.datasets[split],
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
