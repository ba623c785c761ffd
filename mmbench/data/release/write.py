"""Shapes scenes written as JPEG files in a benchmark's released layout (`layouts.LAYOUTS`): the real file
names and JSON structure, so `mmbench-train data=<benchmark> data.root=<dir>` runs without the real data
(scripts/write_release_layout.py) and the tests read every layout end to end.

What each layout gets from a scene: its captions (COCO, Flickr30k); its questions with their answer given
by 10 annotators, the answer type (yes/no, number, other) from the answer as VQAv2 assigns it (VQAv2);
hypotheses labelled entailment (a true statement), contradiction (its verified-false hard negative) and
neutral (a caption of another scene) (SNLI-VE); memes whose text is true of the image (label 0) or its hard
negative (label 1) (Hateful Memes); for a pair of scenes, statements "in the left image, <text>" / "in the
right image, <text>", True for a true statement of that scene and False for its hard negative (NLVR2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmbench.data.release.layouts import (
    HATEFUL_MEMES_SPLITS,
    LAYOUTS,
    NLVR2_SPLITS,
    SNLI_VE_SPLITS,
    VQA_FILES,
    VQA_TEST_DEV,
    coco_image,
    nlvr2_images,
)
from mmbench.data.shapes.generate import generate_split
from mmbench.data.shapes.settings import SceneSettings

NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}


class Scenes:
    """Shapes scenes of the release splits, each with a unique id (disjoint splits, seeded)."""

    def __init__(self, image_size: int, seed: int):
        self.settings = SceneSettings(seed=seed, image_size=image_size).__dict__
        self.offset = 1  # COCO ids start at 1

    def split(self, split: str, n: int) -> Iterator[dict]:
        """n scenes of one Shapes split (train / val / test), as row dicts."""
        columns = generate_split(split, n, id_offset=self.offset, **self.settings)
        self.offset += n
        for i in range(n):
            yield {name: values[i] for name, values in columns.items()}


def _save(scene: dict, path: Path) -> None:
    from PIL import Image

    size = scene["image_size"]
    pixels = np.frombuffer(scene["pixels"], dtype=np.uint8).reshape(size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=95)


def _dump(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _sizes(n: int) -> dict[str, int]:
    """Images per Shapes split for n training images: val and test a quarter each (at least 2)."""
    return {"train": n, "val": max(2, n // 4), "test": max(2, n // 4)}


def _karpathy(root: Path, scenes: Scenes, n: int, coco: bool) -> None:
    images: list[dict] = []  # Karpathy's image entries
    sizes = _sizes(n)
    # COCO: train's images in train2014; restval (a third of train) and val / test in val2014
    parts = [("train", "train", sizes["train"])]
    if coco:
        restval = max(1, n // 3)
        parts = [("train", "train", sizes["train"] - restval), ("train", "restval", restval)]
    parts += [("val", "val", sizes["val"]), ("test", "test", sizes["test"])]
    sentid = 0
    for shapes_split, split, count in parts:
        for scene in scenes.split(shapes_split, count):
            cocoid = scene["image_id"]
            if coco:
                folder = "train2014" if split == "train" else "val2014"
                filepath, filename = folder, coco_image(folder, cocoid).split("/")[1]
                path = root / filepath / filename
            else:
                filepath, filename = None, f"{1000000000 + cocoid}.jpg"
                path = root / "flickr30k-images" / filename
            _save(scene, path)
            sentences = []
            for caption in scene["captions"]:
                sentences.append(
                    {"tokens": caption.lower().split(), "raw": caption, "imgid": len(images), "sentid": sentid}
                )
                sentid += 1
            entry = {
                "sentids": [s["sentid"] for s in sentences],
                "imgid": len(images),
                "sentences": sentences,
                "split": split,
                "filename": filename,
            }
            if coco:
                entry.update(filepath=filepath, cocoid=cocoid)
            images.append(entry)
    name = "dataset_coco.json" if coco else "dataset_flickr30k.json"
    _dump({"images": images, "dataset": "coco" if coco else "flickr30k"}, root / name)


def answer_type(answer: str) -> str:
    """VQAv2's answer type of an answer: yes/no, number (digits or a number word), other."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return "yes/no"
    return "number" if a.isdigit() or a in NUMBER_WORDS else "other"


def _vqav2(root: Path, scenes: Scenes, n: int) -> None:
    sizes = _sizes(n)
    info = {"description": "Shapes scenes in VQAv2's layout (mmbench scripts/write_release_layout.py)"}
    parts = (("train2014", "train", sizes["train"]), ("val2014", "test", sizes["test"]), ("test-dev2015", "val", 2))
    for subtype, shapes_split, count in parts:
        folder = subtype.replace("test-dev", "test")  # test-dev questions ask about test2015 images
        questions, annotations = [], []
        for scene in scenes.split(shapes_split, count):
            image_id = scene["image_id"]
            _save(scene, root / coco_image(folder, image_id))
            for k, (question, answer) in enumerate(zip(scene["questions"], scene["answers"])):
                qid = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": question, "question_id": qid})
                annotations.append(
                    {
                        "question_type": " ".join(question.lower().split()[:2]),
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": a + 1} for a in range(10)
                        ],
                        "image_id": image_id,
                        "answer_type": answer_type(answer),
                        "question_id": qid,
                    }
                )
        common = {"info": info, "license": {}, "data_subtype": subtype}
        question_file = {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}
        if subtype == "test-dev2015":  # answers are not released
            _dump(question_file, root / VQA_TEST_DEV)
            continue
        qfile, afile = VQA_FILES[subtype.removesuffix("2014")]
        _dump(question_file, root / qfile)
        _dump({**common, "annotations": annotations}, root / afile)


def _lines(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _snli_ve(root: Path, scenes: Scenes, n: int) -> None:
    for file, (shapes_split, count) in zip(SNLI_VE_SPLITS.values(), _sizes(n).items()):
        rows = []
        batch = list(scenes.split(shapes_split, count))
        for i, scene in enumerate(batch):
            flickr_id = 1000000000 + scene["image_id"]
            _save(scene, root / "flickr30k-images" / f"{flickr_id}.jpg")
            other = batch[(i + 1) % len(batch)]["captions"][0]
            hypotheses = [(scene["match_text"], "entailment"), (other, "neutral")]
            hypotheses += [(neg, "contradiction") for neg in scene["match_negatives"][:1]]
            for k, (text, label) in enumerate(hypotheses):
                rows.append(
                    {
                        "Flickr30K_ID": str(flickr_id),
                        "gold_label": label,
                        "sentence1": scene["captions"][0],
                        "sentence2": text,
                        "pairID": f"{flickr_id}.jpg#{k}",
                        "captionID": f"{flickr_id}.jpg#0",
                    }
                )
        _lines(rows, root / file)


def _hateful_memes(root: Path, scenes: Scenes, n: int) -> None:
    for file, (shapes_split, count) in zip(HATEFUL_MEMES_SPLITS.values(), _sizes(n).items()):
        rows = []
        for i, scene in enumerate(scenes.split(shapes_split, count)):
            meme_id = scene["image_id"]
            _save(scene, root / "img" / f"{meme_id:05d}.png")
            negatives = scene["match_negatives"]
            hateful = i % 2 == 1 and bool(negatives)
            text = negatives[0] if hateful else scene["match_text"]
            rows.append({"id": meme_id, "img": f"img/{meme_id:05d}.png", "label": int(hateful), "text": text})
        _lines(rows, root / file)


def _nlvr2(root: Path, scenes: Scenes, n: int) -> None:
    for (split, file), (shapes_split, count) in zip(NLVR2_SPLITS.items(), _sizes(n).items()):
        rows = []
        batch = list(scenes.split(shapes_split, 2 * count))
        for i in range(count):
            left, right = batch[2 * i], batch[2 * i + 1]
            directory = i % 100
            pair_id = f"{split}-{left['image_id']}-0"
            statements = []
            for side, scene in (("left", left), ("right", right)):
                statements.append((f"in the {side} image, {scene['match_text']}", "True"))
                statements += [(f"in the {side} image, {neg}", "False") for neg in scene["match_negatives"][:1]]
            for k, (sentence, label) in enumerate(statements):
                identifier = f"{pair_id}-{k}"
                _, left_path, right_path = nlvr2_images(split, identifier, directory)
                row = {"identifier": identifier, "sentence": sentence, "label": label, "writer": "shapes"}
                rows.append({**row, "directory": directory} if split == "train" else row)
            _save(left, root / left_path)
            _save(right, root / right_path)
        _lines(rows, root / file)


WRITERS = {
    "coco_karpathy": lambda root, scenes, n: _karpathy(root, scenes, n, coco=True),
    "flickr30k_karpathy": lambda root, scenes, n: _karpathy(root, scenes, n, coco=False),
    "vqav2": _vqav2,
    "snli_ve": _snli_ve,
    "hateful_memes": _hateful_memes,
    "nlvr2": _nlvr2,
}
assert set(WRITERS) == set(LAYOUTS), "a release layout without a writer"


def write_release_layout(
    benchmark: str, root: str | Path, *, images: int = 64, image_size: int = 64, seed: int = 0
) -> Path:
    """Write `images` training scenes (and a quarter as many per evaluation split) in `benchmark`'s layout."""
    if benchmark not in WRITERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; layouts: {sorted(WRITERS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    WRITERS[benchmark](root, Scenes(image_size, seed), images)
    return root
