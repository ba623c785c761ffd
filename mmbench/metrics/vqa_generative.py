"""VQA answered by generation: the model writes its answer after the question (objective `vqa_gen`,
objectives/vqa_gen.py), scored as the classifier head's answers are (metrics/vqa.py).

Every (image, question) of the split is answered once: each image is encoded once, its features repeated
for its questions, and the answer generated greedily after "[CLS] question" until [SEP] or `max_len`
tokens. The decoded text (special tokens skipped) is scored with `vqa_score`, as the head's answers are:
the official VQAv2 accuracy against several annotator answers (the official normalisation of both sides
included), exact match after that normalisation against one. An answer outside the training answers can
be right here, which a classifier head can never be.

Names: `vqa_generative/acc`, `vqa_generative/acc_<type>` (the suffix made by `type_suffix`, as for `vqa`),
and `vqa_generative/in_vocab`, the share of generated answers that are one of the training answers once
both are normalised (`normalize_answer`; a model that has learnt the answer format says 1.0).
"""

from __future__ import annotations

from mmbench.metrics.common import Inputs, Unavailable, column, eval_mode
from mmbench.metrics.vqa import accuracy_by_type, normalize_answer, question_batches, vqa_score
from mmbench.objectives.base import AnswerGenerator


def answer_generator(module) -> AnswerGenerator | None:
    """The objective that answers by generation, or None."""
    return next((o for o in module.objectives.values() if isinstance(o, AnswerGenerator)), None)


def vqa_generative(
    module,
    inputs: Inputs,
    *,
    batch_size: int,
    max_images: int | None,
    max_len: int,
    return_predictions: bool = False,
):
    """Generative VQA accuracy on the split of `inputs`; with `return_predictions` also a list of
    (row, question, answer(s), generated answer)."""
    gen = answer_generator(module)
    dataset = inputs.dataset
    questions, answer_col, qtypes = (column(dataset, c) for c in ("questions", "answers", "question_types"))
    answer_col = column(dataset, "all_answers") or answer_col
    if gen is None:
        raise Unavailable("needs the vqa_gen objective (answers generated after the question)")
    if questions is None:
        raise Unavailable("the data has no `questions` column")
    if answer_col is None:
        raise Unavailable("the data has no `answers` column")
    _, eos_id = inputs.caption_delimiters()
    n = len(questions) if max_images is None else min(max_images, len(questions))
    model = module.model
    generated: list[str] = []
    pairs: list[tuple[int, int]] = []
    with eval_mode(module):
        for chunk, ids, mask, image in question_batches(model, inputs, questions, n, batch_size):
            answers = gen.generate_answers(model, image, ids, mask, max_len, eos_id)
            generated += inputs.tokenizer.decode_batch([a.tolist() for a in answers], skip_special_tokens=True)
            pairs += chunk
    vocabulary = {normalize_answer(a) for a in inputs.answers}
    truths = [answer_col[r][q] for r, q in pairs]
    scores = [vqa_score(text, truth) for text, truth in zip(generated, truths)]
    types = None if qtypes is None else [qtypes[r][q] for r, q in pairs]
    metrics = {f"vqa_generative/{k}": v for k, v in accuracy_by_type(scores, types).items()}
    if generated:
        metrics["vqa_generative/in_vocab"] = sum(normalize_answer(t) in vocabulary for t in generated) / len(generated)
    metrics = dict(sorted(metrics.items()))
    predictions = [(r, questions[r][q], truth, text) for (r, q), truth, text in zip(pairs, truths, generated)]
    return (metrics, predictions) if return_predictions else metrics
