"""VQA accuracy with a breakdown per question type.

Every (image, question) of the split is answered once: each image is encoded once, its features
are repeated for its questions, and the VQA head's argmax over the answer vocabulary is the
prediction. Scoring:

* several annotator answers (a list per question): the VQAv2 soft accuracy
  `acc(a) = mean over the n leave-one-out subsets of min(1, #annotators in the subset who said a / 3)`
  (Antol et al., 2015; the official evaluation script, for n = 10 it averages over the 10 subsets of 9);
* one answer (a string, as in Shapes): exact match.

Answers are compared after `normalize_answer` (lower case, surrounding whitespace and a final
period removed); the official script's full punctuation / article / number-word normalisation
is not needed for closed answer sets and is not re-implemented here.

Names: `vqa/acc` and `vqa/acc_<question type>` (e.g. `vqa/acc_count`) when the data has
`question_types`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch

from mmbench.metrics.common import Inputs, Unavailable, chunks, column, encode_images, eval_mode
from mmbench.models.outputs import Features


def normalize_answer(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()


def vqa_score(prediction: str, answers: str | Sequence[str]) -> float:
    """Accuracy of one prediction: exact match against one answer, VQAv2 soft accuracy against several."""
    pred = normalize_answer(prediction)
    if isinstance(answers, str):
        return float(pred == normalize_answer(answers))
    gts = [normalize_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    matches = sum(g == pred for g in gts)
    # leaving out annotator i removes one match when annotator i said `pred`
    return sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts) / len(gts)


def question_batches(
    model, inputs: Inputs, questions: list, n: int, batch_size: int
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor, Features]]:
    """Every (image row, question index) of the first n images, in order, in batches: (the pairs, question
    ids (b, T), mask (b, T), the image features of each pair (b, ...)). Images are encoded once, in chunks,
    and their features repeated for their questions (shared by `vqa` and `vqa_generative`)."""
    for s in chunks(n, batch_size):  # images in chunks; all questions of those images at once
        rows = list(range(s.start, s.stop))
        image = encode_images(model, inputs, rows, batch_size)  # each image once
        local = [(r - s.start, q) for r in rows for q in range(len(questions[r]))]
        if not local:
            continue
        idx = torch.tensor([i for i, _ in local], device=inputs.device)
        for c in chunks(len(local), batch_size):
            ids, mask = inputs.texts([questions[rows[i]][q] for i, q in local[c]])
            yield [(rows[i], q) for i, q in local[c]], ids, mask, image.index(idx[c])


def vqa_objective(module):
    """The objective that answers questions (has `answer_logits`), or None."""
    return next((o for o in module.objectives.values() if hasattr(o, "answer_logits")), None)


def vqa(
    module,
    inputs: Inputs,
    *,
    batch_size: int,
    max_images: int | None,
    return_predictions: bool = False,
):
    """VQA accuracy on the split of `inputs`, whose `answers` is the model's answer vocabulary.

    Returns the metrics, or (metrics, predictions) with `return_predictions`, where predictions is a
    list of (row, question, answer(s), prediction).
    """
    head = vqa_objective(module)
    dataset = inputs.dataset
    questions, answer_col, qtypes = (column(dataset, c) for c in ("questions", "answers", "question_types"))
    answer_col = column(dataset, "all_answers") or answer_col  # every annotator's answer when the data has them
    answers = inputs.answers
    if head is None:
        raise Unavailable("needs the vqa objective (its answer head)")
    if questions is None:
        raise Unavailable("the data has no `questions` column")
    n = len(questions) if max_images is None else min(max_images, len(questions))
    model = module.model
    pairs: list[tuple[int, int]] = []
    predicted: list[int] = []
    with eval_mode(module):
        for chunk, ids, mask, image in question_batches(model, inputs, questions, n, batch_size):
            field = head.question_field
            batch = {f"{field}_ids": ids, f"{field}_mask": mask} if field else {}
            text = None if field else model.encode_text(ids, mask)
            logits = head.answer_logits(model, batch, text, image)  # (b, A)
            predicted += logits.argmax(-1).tolist()
            pairs += chunk
    totals, counts = defaultdict(float), defaultdict(int)
    predictions = []
    for (r, q), p in zip(pairs, predicted):
        truth = answer_col[r][q]
        score = vqa_score(answers[p], truth)
        keys = ["acc"] + ([f"acc_{qtypes[r][q]}"] if qtypes is not None else [])
        for key in keys:
            totals[key] += score
            counts[key] += 1
        predictions.append((r, questions[r][q], truth, answers[p]))
    metrics = {f"vqa/{k}": totals[k] / counts[k] for k in sorted(counts)}
    return (metrics, predictions) if return_predictions else metrics
