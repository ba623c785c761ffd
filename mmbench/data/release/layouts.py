"""The benchmarks as their authors distribute them: the files under `data.root`, how to read them into
rows, and the split sizes the papers report.

Each layout was checked against the benchmark's own release (the file names, the JSON structure and
the fields read are the released ones, not a hub copy's):

* `coco_karpathy`: Karpathy & Fei-Fei's `dataset_coco.json` (cs.stanford.edu/people/karpathy/deepimagesent,
  `caption_datasets.zip`): `{"images": [{"filepath": "val2014", "filename": "COCO_val2014_....jpg",
  "cocoid": int, "split": "train" | "restval" | "val" | "test", "sentences": [{"raw": str, ...}]}]}` + the
  COCO 2014 image folders `train2014/`, `val2014/`; train = `train` + `restval` as every paper trains.
* `flickr30k_karpathy`: the same zip's `dataset_flickr30k.json` (no `filepath`, no `cocoid`: the image id
  is the file's number) + `flickr30k-images/` of the Flickr30k release.
* `vqav2`: visualqa.org's `v2_OpenEnded_mscoco_<split>2014_questions.json` (`{"questions": [{"image_id",
  "question", "question_id"}]}`) joined on `question_id` with `v2_mscoco_<split>2014_annotations.json`
  (`{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}] x 10, "multiple_choice_answer",
  "answer_type", "question_type"}]}`) + COCO's `train2014/`, `val2014/` (`COCO_<split>2014_<id:012d>.jpg`).
  Test answers are not public, so test = the official val and val is carved from train (seeded); the
  answer type (yes/no, number, other) is the question type the VQA protocol reports by, as the official
  results do.
* `snli_ve`: SNLI-VE's `snli_ve_{train,dev,test}.jsonl` (necla-ml/SNLI-VE; fields `Flickr30K_ID`,
  `sentence2` the hypothesis, `gold_label`) + `flickr30k-images/<Flickr30K_ID>.jpg`.
* `nlvr2`: lil-lab/nlvr's `nlvr2/data/{train,dev,test1}.json` (JSON Lines despite the name: `{"identifier":
  "train-10171-0-0", "sentence", "label": "True" | "False", "directory": 49 (train only), ...}`) + the released
  images: `images/train/<directory>/<pair>-img0.png` and `-img1.png` (the identifier less its last field names
  the pair), `dev/<pair>-img0.png`, `test1/...`. One row per statement with its left and right image;
  statements of one pair are one canonical row. val = dev, test = test-P (test1).
* `hateful_memes`: the challenge's `train.jsonl`, `dev_seen.jsonl`, `test_seen.jsonl` (`{"id", "img":
  "img/01235.png", "label": 0 | 1, "text"}`) + `img/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mmbench.data.errors import DataError

Rows = dict[str, list[dict]]  # reader split name -> rows (one per caption list / question / statement)


@dataclass(frozen=True)
class Layout:
    """One benchmark's release on disk and how it becomes the converter's rows."""

    files: tuple[str, ...]  # annotation files, relative to data.root
    image_dirs: tuple[str, ...]  # image folders, relative to data.root
    read: Callable[[Path], Rows]
    # role -> row key (None: absent), as `data.source.columns` of a HF source (mmbench.data.hf.roles)
    columns: Mapping[str, str | None]
    splits: dict[str, str | None]  # canonical split -> reader split (None: carved from train, seeded)
    # canonical split -> (images, examples) the benchmark's papers report (images None: not reported)
    published: dict[str, tuple[int | None, int]]
    examples: str  # what one example is, for the size log
    optional: tuple[str, ...] = field(default=())  # files read when present (e.g. test-dev questions)

    def expected(self) -> str:
        """The layout as one line: `dataset_coco.json, train2014/, val2014/`."""
        return ", ".join([*self.files, *(f"{d}/" for d in self.image_dirs)])


# --------------------------------------------------------------------------- reading the released files


def load_json(path: Path):
    """A released JSON file, or a DataError naming the file and where it stops parsing."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(
            f"cannot read {path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg})"
        ) from err


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSON Lines file; a bad line is a DataError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"cannot read {path}, line {number}: invalid JSON ({err.msg} at column {err.colno})"
                ) from err
            if not isinstance(value, dict):
                raise DataError(f"cannot read {path}, line {number}: a JSON {type(value).__name__}, not an object")
            yield number, value


def field_of(record: dict, key: str, where: str):
    """record[key], or a DataError naming the record's place and the fields it has."""
    try:
        return record[key]
    except (KeyError, TypeError):
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where} has no field {key!r} (it has {fields})") from None


KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def karpathy(file: str, image_path: Callable[[dict, str], str], image_id: Callable[[dict, str], int]) -> Callable:
    """Reader of a Karpathy split file: one row per image with its raw sentences; `restval` joins train."""

    def read(root: Path) -> Rows:
        path = root / file
        data = load_json(path)
        images = field_of(data, "images", str(path)) if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{path}: expected {{'images': [...], 'dataset': ...}} (Karpathy's split file)")
        rows: Rows = {"train": [], "val": [], "test": []}
        for i, image in enumerate(images):
            where = f"{path}, images[{i}]"
            split = field_of(image, "split", where)
            if split not in KARPATHY_SPLITS:
                raise DataError(f"{where}: split {split!r}; Karpathy's files use {sorted(KARPATHY_SPLITS)}")
            sentences = field_of(image, "sentences", where)
            rows[KARPATHY_SPLITS[split]].append(
                {
                    "image": image_path(image, where),
                    "captions": [field_of(s, "raw", f"{where}.sentences") for s in sentences],
                    "image_id": image_id(image, where),
                }
            )
        return rows

    return read


def _coco_path(image: dict, where: str) -> str:
    return f"{field_of(image, 'filepath', where)}/{field_of(image, 'filename', where)}"


def _flickr_path(image: dict, where: str) -> str:
    return f"flickr30k-images/{field_of(image, 'filename', where)}"


def _flickr_id(image: dict, where: str) -> int:
    name = Path(field_of(image, "filename", where)).stem
    return int(name) if name.isdigit() else int(field_of(image, "imgid", where))


VQA_FILES = {
    split: (f"v2_OpenEnded_mscoco_{split}2014_questions.json", f"v2_mscoco_{split}2014_annotations.json")
    for split in ("train", "val")
}
VQA_TEST_DEV = "v2_OpenEnded_mscoco_test-dev2015_questions.json"


def coco_image(split: str, image_id: int) -> str:
    """COCO's file name of an image: `val2014/COCO_val2014_000000391895.jpg`."""
    return f"{split}/COCO_{split}_{int(image_id):012d}.jpg"


def read_vqav2(root: Path) -> Rows:
    """One row per question: the question joined with its annotation (10 answers, answer type) by question_id."""
    rows: Rows = {}
    for split, (qfile, afile) in VQA_FILES.items():
        questions = field_of(load_json(root / qfile), "questions", str(root / qfile))
        annotations = field_of(load_json(root / afile), "annotations", str(root / afile))
        by_id = {field_of(a, "question_id", f"{root / afile}, annotations[{i}]"): a for i, a in enumerate(annotations)}
        out = rows[split] = []
        for i, q in enumerate(questions):
            where = f"{root / qfile}, questions[{i}]"
            qid = field_of(q, "question_id", where)
            annotation = by_id.get(qid)
            if annotation is None:
                raise DataError(f"{where}: question_id {qid} has no annotation in {root / afile}")
            where_a = f"{root / afile}, question_id {qid}"
            image_id = int(field_of(q, "image_id", where))
            out.append(
                {
                    "image": coco_image(f"{split}2014", image_id),
                    "question": field_of(q, "question", where),
                    "answers": [field_of(a, "answer", where_a) for a in field_of(annotation, "answers", where_a)],
                    "answer": field_of(annotation, "multiple_choice_answer", where_a),
                    "answer_type": field_of(annotation, "answer_type", where_a),
                    "image_id": image_id,
                }
            )
    return rows


SNLI_VE_SPLITS = {"train": "snli_ve_train.jsonl", "dev": "snli_ve_dev.jsonl", "test": "snli_ve_test.jsonl"}


def jsonl_reader(splits: dict[str, str], row: Callable[[dict, str, str], dict]) -> Callable[[Path], Rows]:
    """Reader of a release with one JSON Lines file per split: `row(record, split, where)` per line."""

    def read(root: Path) -> Rows:
        return {
            split: [row(record, split, f"{root / file}, line {line}") for line, record in json_lines(root / file)]
            for split, file in splits.items()
        }

    return read


def snli_ve_row(record: dict, split: str, where: str) -> dict:
    """A hypothesis: its Flickr30k premise image and the gold label."""
    image = str(field_of(record, "Flickr30K_ID", where))
    return {
        "image": f"flickr30k-images/{image}.jpg",
        "text": field_of(record, "sentence2", where),
        "label": field_of(record, "gold_label", where),
        "image_id": int(image),
    }


NLVR2_SPLITS = {"train": "train.json", "dev": "dev.json", "test1": "test1.json"}
NLVR2_IMAGES = {"train": "images/train", "dev": "dev", "test1": "test1"}


def nlvr2_images(split: str, identifier: str, directory=None) -> tuple[str, str, str]:
    """(pair, left image, right image) of an NLVR2 statement: `train-10171-0-0` in directory 49 ->
    `images/train/49/train-10171-0-img0.png`, `...-img1.png`."""
    pair = identifier.rsplit("-", 1)[0]
    folder = NLVR2_IMAGES[split] + (f"/{directory}" if split == "train" else "")
    return pair, f"{folder}/{pair}-img0.png", f"{folder}/{pair}-img1.png"


def nlvr2_row(record: dict, split: str, where: str) -> dict:
    """A statement: its image pair (left, right) and its label."""
    directory = field_of(record, "directory", where) if split == "train" else None
    pair, left, right = nlvr2_images(split, str(field_of(record, "identifier", where)), directory)
    label = str(field_of(record, "label", where))
    return {
        "image": left,
        "image_right": right,
        "text": field_of(record, "sentence", where),
        "label": label,
        "image_id": pair,
    }


HATEFUL_MEMES_SPLITS = {"train": "train.jsonl", "dev_seen": "dev_seen.jsonl", "test_seen": "test_seen.jsonl"}


def hateful_memes_row(record: dict, split: str, where: str) -> dict:
    """A meme: its image, its text and its label (1 = hateful; -1 where the file has none)."""
    label = record.get("label")
    return {
        "image": field_of(record, "img", where),
        "text": field_of(record, "text", where),
        "label": int(label) if label is not None else -1,
        "image_id": int(field_of(record, "id", where)),
    }


CAPTIONS = {"image": "image", "text": "captions", "image_id": "image_id"}
STATEMENTS = {"image": "image", "text": "text", "label": "label", "image_id": "image_id"}

LAYOUTS: dict[str, Layout] = {
    "coco_karpathy": Layout(
        files=("dataset_coco.json",),
        image_dirs=("train2014", "val2014"),
        read=karpathy("dataset_coco.json", _coco_path, lambda image, where: int(field_of(image, "cocoid", where))),
        columns=CAPTIONS,
        splits={"train": "train", "val": "val", "test": "test"},
        published={"train": (113_287, 566_747), "val": (5_000, 25_010), "test": (5_000, 25_010)},
        examples="captions",
    ),
    "flickr30k_karpathy": Layout(
        files=("dataset_flickr30k.json",),
        image_dirs=("flickr30k-images",),
        read=karpathy("dataset_flickr30k.json", _flickr_path, _flickr_id),
        columns=CAPTIONS,
        splits={"train": "train", "val": "val", "test": "test"},
        published={"train": (29_000, 145_000), "val": (1_014, 5_070), "test": (1_000, 5_000)},
        examples="captions",
    ),
    "vqav2": Layout(
        files=tuple(f for pair in VQA_FILES.values() for f in pair),
        image_dirs=("train2014", "val2014"),
        read=read_vqav2,
        columns={
            "image": "image",
            "text": None,
            "question": "question",
            "answers": "answers",
            "answer": "answer",
            "question_type": "answer_type",
            "image_id": "image_id",
        },
        splits={"train": "train", "val": None, "test": "val"},
        # official train and val (val is the test here; mmbench's val is carved from train)
        published={"train": (82_783, 443_757), "test": (40_504, 214_354)},
        examples="questions",
        optional=(VQA_TEST_DEV,),
    ),
    "snli_ve": Layout(
        files=tuple(SNLI_VE_SPLITS.values()),
        image_dirs=("flickr30k-images",),
        read=jsonl_reader(SNLI_VE_SPLITS, snli_ve_row),
        columns=STATEMENTS,
        splits={"train": "train", "val": "dev", "test": "test"},
        published={"train": (29_783, 529_527), "val": (1_000, 17_858), "test": (1_000, 17_901)},
        examples="hypotheses",
    ),
    "nlvr2": Layout(
        files=tuple(NLVR2_SPLITS.values()),
        image_dirs=tuple(NLVR2_IMAGES.values()),
        read=jsonl_reader(NLVR2_SPLITS, nlvr2_row),
        columns={**STATEMENTS, "image_right": "image_right"},
        splits={"train": "train", "val": "dev", "test": "test1"},
        published={"train": (None, 86_373), "val": (None, 6_982), "test": (None, 6_967)},
        examples="statements",
    ),
    "hateful_memes": Layout(
        files=tuple(HATEFUL_MEMES_SPLITS.values()),
        image_dirs=("img",),
        read=jsonl_reader(HATEFUL_MEMES_SPLITS, hateful_memes_row),
        columns=STATEMENTS,
        splits={"train": "train", "val": "dev_seen", "test": "test_seen"},
        published={"train": (8_500, 8_500), "val": (500, 500), "test": (1_000, 1_000)},
        examples="memes",
    ),
}
