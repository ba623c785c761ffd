"""Cost of reading a benchmark's released annotation files at their real size (no images): Karpathy's
dataset_coco.json (123,287 images, 616,767 captions) and VQAv2's train questions + annotations (443,757
questions, 10 answers each), written here with the real structure and synthetic text, then read by the
release readers (`layouts.LAYOUTS[...].read`) and turned into the converter's input (`Dataset.from_list`).
Image decoding and the Arrow cache are the conversion's cost (the scale issue), not measured here.

    .venv/bin/python scripts/bench_release_read.py [--out /tmp/release-bench]

Prints, per benchmark: file size, read + join seconds, rows, from_list seconds, peak RSS (MB).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

WORDS = "a man woman dog cat red blue green small large on under next to the of with in holding riding".split()


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(8, 14)))).capitalize() + "."


def write_coco(root: Path, rng: np.random.Generator) -> None:
    sizes = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
    images, sentid = [], 0
    for split, n in sizes.items():
        folder = "train2014" if split == "train" else "val2014"
        for _ in range(n):
            cocoid = len(images) + 1
            k = 5 + int(rng.random() < 0.0025)  # a few images have 6 captions, as in the release
            sents = [{"tokens": [], "raw": sentence(rng), "imgid": len(images), "sentid": sentid + j} for j in range(k)]
            sentid += k
            images.append(
                {
                    "filepath": folder,
                    "sentids": [s["sentid"] for s in sents],
                    "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
                    "imgid": len(images),
                    "split": split,
                    "sentences": sents,
                    "cocoid": cocoid,
                }
            )
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))


def write_vqa_train(root: Path, rng: np.random.Generator) -> None:
    questions, annotations = [], []
    answers = ["yes", "no", "2", "1", "white", "red", "dog", "tennis", "3", "blue"]
    for image_id in range(1, 82_784):
        for k in range(5 if image_id <= 30_000 else 5 if image_id % 3 else 6):
            if len(questions) == 443_757:
                break
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": sentence(rng)[:-1] + "?", "question_id": qid})
            picks = rng.choice(answers, size=10)
            annotations.append(
                {
                    "question_type": "what is",
                    "multiple_choice_answer": str(picks[0]),
                    "answers": [
                        {"answer": str(a), "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(picks)
                    ],
                    "image_id": image_id,
                    "answer_type": "other",
                    "question_id": qid,
                }
            )
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    # val: a small stand-in (the reader reads both splits; only train is timed at full size)
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions[:1000]}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations[:1000]}))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, root: Path, files: list[str]) -> None:
    import datasets

    from mmbench.data.release.layouts import LAYOUTS

    size = sum((root / f).stat().st_size for f in files) / 1e6
    start = time.perf_counter()
    rows = LAYOUTS[name].read(root)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    tables = {split: datasets.Dataset.from_list(r) for split, r in rows.items() if r}
    table_s = time.perf_counter() - start
    counts = {split: len(r) for split, r in rows.items()}
    print(
        f"{name}: {size:,.0f} MB of JSON; read + join {read_s:.1f} s; rows {counts}; "
        f"from_list {table_s:.1f} s ({sum(len(t) for t in tables.values()):,} rows); peak RSS {peak_mb():,.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/release-bench")
    parser.add_argument("--benchmark", choices=["coco_karpathy", "vqav2"], required=True)
    args = parser.parse_args()
    root = Path(args.out) / args.benchmark
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if args.benchmark == "coco_karpathy":
        if not (root / "dataset_coco.json").is_file():
            write_coco(root, rng)
        measure("coco_karpathy", root, ["dataset_coco.json"])
    else:
        if not (root / "v2_mscoco_train2014_annotations.json").is_file():
            write_vqa_train(root, rng)
        measure("vqav2", root, ["v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json"])


if __name__ == "__main__":
    main()
