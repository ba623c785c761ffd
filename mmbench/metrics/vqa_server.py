"""VQAv2's evaluation-server result file: the test-dev / test-std answers are not public, so papers'
test-dev numbers come from uploading `[{"question_id": int, "answer": str}, ...]` for every question of
the questions file (visualqa.org's results format), named
`vqa_OpenEnded_mscoco_<data_subtype>_<alg>_results.json`.

`mmbench-eval ckpt_path=... vqa_server.questions=<dir>/v2_OpenEnded_mscoco_test-dev2015_questions.json`
answers every question with the checkpoint's VQA head (each image read from COCO's `test2015/` beside
the questions file, or `vqa_server.images`, encoded once) and writes the file into the evaluation's directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmbench.data.hf.images import read_image
from mmbench.data.release.layouts import coco_image, field_of, load_json
from mmbench.metrics.common import Inputs, chunks, eval_mode
from mmbench.metrics.vqa import best_answers, vqa_objective


class ServerFileError(ValueError):
    """A questions file or image folder that cannot be answered (mmbench-eval prints it, exit code 2)."""


def image_folder(questions_path: Path, data_subtype: str, images: str | None) -> Path:
    """Where the questions' images are: `images`, else COCO's folder beside the questions file
    (test-dev2015 and test2015 questions both ask about `test2015/` images)."""
    if images:
        return Path(images).expanduser()
    return questions_path.parent / data_subtype.replace("test-dev", "test")


def read_questions(questions: str | Path, images: str | None = None) -> tuple[list[dict], str, Path]:
    """(questions, data subtype, image folder) of a VQAv2 questions file; refused early, naming what is missing."""
    path = Path(questions).expanduser()
    if not path.is_file():
        raise ServerFileError(
            f"vqa_server.questions={questions}: no such file (VQAv2's v2_OpenEnded_mscoco_test-dev2015_questions.json)"
        )
    data = load_json(path)
    items = field_of(data, "questions", str(path))
    subtype = str(data.get("data_subtype") or path.stem.split("_")[-2])
    folder = image_folder(path, subtype, images)
    if not folder.is_dir():
        raise ServerFileError(
            f"no image folder {folder} for {path.name}; set vqa_server.images=<COCO {subtype} images>"
        )
    return items, subtype, folder


@torch.no_grad()
def server_answers(
    module, inputs: Inputs, questions: list[dict], folder: Path, *, image_size: int, batch_size: int
) -> list[dict]:
    """`{"question_id", "answer"}` for every question, in file order; `inputs.answers` is the answer vocabulary."""
    head = vqa_objective(module)
    if head is None:
        raise ServerFileError("vqa_server needs a checkpoint trained with the vqa objective (its answer head)")
    by_image: dict[int, list[dict]] = {}
    for i, q in enumerate(questions):
        by_image.setdefault(int(field_of(q, "image_id", f"questions[{i}]")), []).append(q)
    subtype = folder.name
    image_ids = list(by_image)
    answered: dict[int, str] = {}
    model = module.model
    with eval_mode(module):
        for s in chunks(len(image_ids), batch_size):
            ids_ = image_ids[s]
            items = [
                {"image": read_image(coco_image(subtype, i), image_size, folder.parent), "image_id": i} for i in ids_
            ]
            image = model.encode_image(inputs.image_items(items))  # each image once
            pairs = [(k, q) for k, i in enumerate(ids_) for q in by_image[i]]
            index = torch.tensor([k for k, _ in pairs], device=inputs.device)
            for c in chunks(len(pairs), batch_size):
                ids, mask = inputs.texts([q["question"] for _, q in pairs[c]])
                best = best_answers(head, model, ids, mask, image.index(index[c]))
                answered.update({int(q["question_id"]): inputs.answers[b] for (_, q), b in zip(pairs[c], best)})
    return [{"question_id": int(q["question_id"]), "answer": answered[int(q["question_id"])]} for q in questions]


def write_server_file(results: list[dict], out_dir: Path, data_subtype: str, alg: str = "mmbench") -> Path:
    path = Path(out_dir) / f"vqa_OpenEnded_mscoco_{data_subtype}_{alg}_results.json"
    path.write_text(json.dumps(results))
    return path
