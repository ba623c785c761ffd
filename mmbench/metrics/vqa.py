"""VQA accuracy with a breakdown per question type, equal to the official VQAv2 evaluation.

Every (image, question) of the split is answered once: each image is encoded once, its features
are repeated for its questions, and the VQA head's argmax over the answer vocabulary is the
prediction. Scoring (`vqa_score`):

* several annotator answers (a list per question, `all_answers`): the official VQAv2 accuracy, the
  script `PythonEvaluationTools/vqaEvaluation/vqaEval.py` of https://github.com/GT-Vision-Lab/VQA
  (commit a013f00, 2021) reproduced for any prediction string: both sides are normalised as it does
  (newlines/tabs, punctuation, number words, articles, contractions; only when the annotators disagree),
  then `acc = mean over annotators i of min(1, #other annotators who said the prediction / 3)`;
* one answer (a string, as in Shapes): exact match after the same normalisation of both sides.

Hand-written because no maintained package on PyPI ships the official VQA evaluation as a library
(the official code is a Python 2 script that reads annotation and result JSON files). It is tested
against a verbatim copy of the official functions (tests/test_vqa_official.py).

Names: `vqa/acc`, and `vqa/acc_<type>` per question type when the data has `question_types`, the type
made a metric-name suffix by `type_suffix` (`yes/no` -> `acc_yes_no`). Figures are unrounded fractions
in [0, 1]; the official script reports percentages rounded to 2 decimals.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch

from mmbench.metrics.common import Inputs, Unavailable, column, eval_mode, example_batches
from mmbench.models.outputs import Features
from mmbench.objectives.base import QuestionAnswerer

# --------------------------------------------------------------------------- the official normalisation
# The tables are vqaEval.py's `contractions`, `manualMap`, `articles` and `punct`, copied as they are
# (including entries that can never match, such as "Im": the text is lower-cased before the look-up).

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The official script is Python 2 and compiles its patterns without re.UNICODE, so there `\d` is [0-9];
# re.ASCII gives Python 3 the same meaning.
COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)", re.ASCII)  # `commaStrip`
# `periodStrip`, as written. Its `(?!<=\d)` was meant as a look-behind but is a look-ahead that never
# fails before a period, so the pattern is "a period not followed by a digit" ("3.5" keeps its period).
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
# The script calls `periodStrip.sub("", text, re.UNICODE)`: the flag lands in the `count` argument, and
# re.UNICODE == 32, so only the first 32 such periods are removed. Reproduced deliberately.
PERIOD_STRIP_COUNT = 32


def clean_whitespace(text: str) -> str:
    """Newlines and tabs become spaces, then surrounding whitespace goes (done to every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """vqaEval.py's `processPunctuation`. When the text has a comma between two digits ("1,000"),
    every punctuation mark is deleted; otherwise a mark is deleted where it touches a space anywhere
    in the text (", " or " ,") and replaced by a space where it does not. Then periods not followed by a
    digit are deleted (the first 32). Apostrophes, colons and `.` inside numbers are kept."""
    delete_all = COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:  # the tests of a mark read the original text, the replacements the running one
        out = out.replace(p, "" if delete_all or p + " " in text or " " + p in text else " ")
    return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.py's `processDigitArticle`: lower case, split on whitespace, number words zero..ten (and
    "none") to digits, articles dropped, contractions written without apostrophe restored ("dont" ->
    "don't"), words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official normalisation of one answer: whitespace, punctuation, then digits/articles/contractions."""
    return process_digit_article(process_punctuation(clean_whitespace(answer)))


def vqa_score(prediction: str, answers: str | Sequence[str]) -> float:
    """Accuracy of one prediction, equal to vqaEval.py's per-question accuracy (unrounded) against a list
    of n >= 2 annotator answers; exact match of the normalised strings against one answer (a string or a
    list of one: the official formula would score every prediction 0 there)."""
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("vqa_score needs at least one ground-truth answer, got an empty list")
    if len(answers) == 1:
        return float(normalize_answer(prediction) == normalize_answer(answers[0]))
    pred = clean_whitespace(prediction)
    gts = [clean_whitespace(a) for a in answers]
    # Deliberate, as in the official script (since its commit a013f00): punctuation and digit/article
    # processing is applied to the prediction and the answers only when the answers are not all
    # identical. Against 10 x "yes", "Yes" or "yes." scores 0; against 9 x "yes" + "no" they score 1.
    if len(set(gts)) > 1:
        pred = process_digit_article(process_punctuation(pred))
        gts = [process_digit_article(process_punctuation(g)) for g in gts]
    matches = sum(g == pred for g in gts)
    # leave-one-out: leaving out annotator i removes one match when annotator i said `pred`; the sum runs
    # over the annotators in order and is divided by n, as the script does, so the float is the same
    return sum(min(1, (matches - (g == pred)) / 3) for g in gts) / len(gts)


# --------------------------------------------------------------------------- per question type


def type_suffix(question_type: str) -> str:
    """A question type as a metric-name suffix: each run of characters other than ASCII letters, digits
    and `_` becomes `_` ("yes/no" -> "yes_no", "what color is the" -> "what_color_is_the")."""
    return re.sub(r"\W+", "_", question_type, flags=re.ASCII)


def accuracy_by_type(scores: Sequence[float], types: Sequence[str] | None) -> dict[str, float]:
    """`acc`, the mean score over all questions, and with `types` (one per score) `acc_<type_suffix(type)>`,
    the mean over the questions of each type. Unrounded fractions, keys sorted."""
    totals: defaultdict[str, float] = defaultdict(float)
    counts: defaultdict[str, int] = defaultdict(int)
    named: dict[str, str] = {}  # key -> the type that made it
    for i, score in enumerate(scores):
        keys = ["acc"]
        if types is not None:
            key = f"acc_{type_suffix(types[i])}"
            if named.setdefault(key, types[i]) != types[i]:
                raise ValueError(
                    f"question types {named[key]!r} and {types[i]!r} both become the metric name {key!r}; "
                    "rename one of them in the data's question_types"
                )
            keys.append(key)
        for key in keys:
            totals[key] += score
            counts[key] += 1
    return {k: totals[k] / counts[k] for k in sorted(counts)}


def question_batches(
    model, inputs: Inputs, questions: list, n: int, batch_size: int
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor, Features]]:
    """Every (image row, question index) of the first n images, in order, in batches: (the pairs, question
    ids (b, T), mask (b, T), the image features of each pair (b, ...)); each image encoded once
    (`common.example_batches`; shared by `vqa` and `vqa_generative`)."""
    for pairs, ids, mask, (image,) in example_batches(model, inputs, questions, n, batch_size):
        yield pairs, ids, mask, image


def vqa_objective(module) -> QuestionAnswerer | None:
    """The objective that answers questions from the answer vocabulary, or None."""
    return next((o for o in module.objectives.values() if isinstance(o, QuestionAnswerer)), None)


def best_answers(head, model, ids: torch.Tensor, mask: torch.Tensor, image: Features) -> list[int]:
    """The answer index the VQA head rates highest for each question (b, T) about its image's features."""
    field = head.question_field
    batch = {f"{field}_ids": ids, f"{field}_mask": mask} if field else {}
    text = None if field else model.encode_text(ids, mask)
    return head.answer_logits(model, batch, text, image).argmax(-1).tolist()  # (b, A) -> (b,)


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
    if answer_col is None:
        raise Unavailable("the data has no `answers` column")
    n = len(questions) if max_images is None else min(max_images, len(questions))
    model = module.model
    pairs: list[tuple[int, int]] = []
    predicted: list[int] = []
    with eval_mode(module):
        for chunk, ids, mask, image in question_batches(model, inputs, questions, n, batch_size):
            predicted += best_answers(head, model, ids, mask, image)
            pairs += chunk
    truths = [answer_col[r][q] for r, q in pairs]
    scores = [vqa_score(answers[p], truth) for p, truth in zip(predicted, truths)]
    types = None if qtypes is None else [qtypes[r][q] for r, q in pairs]
    metrics = {f"vqa/{k}": v for k, v in accuracy_by_type(scores, types).items()}
    predictions = [(r, questions[r][q], truth, answers[p]) for (r, q), truth, p in zip(pairs, truths, predicted)]
    return (metrics, predictions) if return_predictions else metrics
