"""VQA accuracy equal to the official VQAv2 evaluation: hand-computed cases of each normalisation rule and of
the leave-one-out formula, per-type figures on a small batch, and equality with a verbatim copy of the
official code (`_OfficialVQAEval`) on generated strings."""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import pytest
import torch

from mmbench.metrics import vqa as vqa_module
from mmbench.metrics.vqa import (
    accuracy_by_type,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    type_suffix,
    vqa,
    vqa_score,
)

# --------------------------------------------------------------------------- the reference oracle


class _OfficialVQAEval:
    """Taken from vqaEval.py of the official VQA evaluation,
    https://github.com/GT-Vision-Lab/VQA/blob/a013f0043c1e2cdc995922dfe257f7149aa9af06/PythonEvaluationTools/vqaEvaluation/vqaEval.py
    (commit a013f00): `__init__`'s tables, `processPunctuation` and `processDigitArticle` copied as they are,
    and `evaluate`'s loop body for one question as `question_accuracy`. Changes for Python 3 only: tabs to
    spaces, and the two patterns written as raw strings compiled with re.ASCII, which is what `\\d` means in
    the Python 2 original (compiled without re.UNICODE). Not mmbench code: a private oracle for the tests."""

    # fmt: off
    def __init__(self):
        self.contractions = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't", \
                             "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", \
                             "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", \
                             "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", \
                             "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", \
                             "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", \
                             "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", \
                             "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", \
                             "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", \
                             "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", \
                             "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've", \
                             "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've", \
                             "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've", \
                             "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", \
                             "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", \
                             "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", \
                             "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", \
                             "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", \
                             "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", \
                             "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", \
                             "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", \
                             "youll": "you'll", "youre": "you're", "youve": "you've"}
        self.manualMap    = { 'none': '0',
                              'zero': '0',
                              'one': '1',
                              'two': '2',
                              'three': '3',
                              'four': '4',
                              'five': '5',
                              'six': '6',
                              'seven': '7',
                              'eight': '8',
                              'nine': '9',
                              'ten': '10'
                            }
        self.articles     = ['a',
                             'an',
                             'the'
                            ]


        self.periodStrip  = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
        self.commaStrip   = re.compile(r"(\d)(\,)(\d)", re.ASCII)
        self.punct        = [';', r"/", '[', ']', '"', '{', '}',
                             '(', ')', '=', '+', '\\', '_', '-',
                             '>', '<', '@', '`', ',', '?', '!']

    def question_accuracy(self, resAns, answers):
        """`evaluate`'s loop body for one question (lines that read the result file and the types left out);
        `answers` become the annotation's answer dicts, whose `answer_id`s 1..n are distinct as in VQAv2, so
        `item!=gtAnsDatum` leaves exactly one annotator out."""
        quesId = 0
        gts = {quesId: {'answers': [{'answer': a, 'answer_confidence': 'yes', 'answer_id': i + 1} for i, a in enumerate(answers)]}}
        for ansDic in gts[quesId]['answers']:
            ansDic['answer'] = ansDic['answer'].replace('\n', ' ')
            ansDic['answer'] = ansDic['answer'].replace('\t', ' ')
            ansDic['answer'] = ansDic['answer'].strip()
        resAns = resAns.replace('\n', ' ')
        resAns = resAns.replace('\t', ' ')
        resAns = resAns.strip()
        gtAcc = []
        gtAnswers = [ans['answer'] for ans in gts[quesId]['answers']]

        if len(set(gtAnswers)) > 1:
            for ansDic in gts[quesId]['answers']:
                ansDic['answer'] = self.processPunctuation(ansDic['answer'])
                ansDic['answer'] = self.processDigitArticle(ansDic['answer'])
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)

        for gtAnsDatum in gts[quesId]['answers']:
            otherGTAns = [item for item in gts[quesId]['answers'] if item!=gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item['answer']==resAns]
            acc = min(1, float(len(matchingAns))/3)
            gtAcc.append(acc)
        avgGTAcc = float(sum(gtAcc))/len(gtAcc)
        return avgGTAcc

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, '')
            else:
                outText = outText.replace(p, ' ')
        outText = self.periodStrip.sub("",
                                      outText,
                                      re.UNICODE)
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = ' '.join(outText)
        return outText
    # fmt: on


OFFICIAL = _OfficialVQAEval()
DIGIT_OF = dict(OFFICIAL.manualMap)  # a copy taken before any use (processDigitArticle adds to manualMap)


def test_the_tables_are_the_official_ones():
    assert vqa_module.CONTRACTIONS == OFFICIAL.contractions
    assert vqa_module.NUMBER_WORDS == DIGIT_OF
    assert list(vqa_module.ARTICLES) == OFFICIAL.articles
    assert list(vqa_module.PUNCTUATION) == OFFICIAL.punct


# --------------------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("Two", "2"),  # number words -> digits, lower case first
        ("none", "0"),
        ("eleven", "eleven"),  # only zero..ten (and none) are in the table
        ("A Frisbee", "frisbee"),  # articles dropped
        ("on the table", "on table"),
        ("yes.", "yes"),  # a period not followed by a digit is deleted
        ("yes!", "yes"),  # "!" touches no space: replaced by a space, which split() then drops
        ("3.5", "3.5"),  # a period before a digit stays
        ("mr. t", "mr t"),
        ("dont", "don't"),  # contractions restored
        ("Dont know", "don't know"),
        ("Im", "im"),  # "Im" is in the table but the text is lower-cased before the look-up
        ("1,000", "1000"),  # a comma between digits: every punctuation mark is deleted
        ("1,000 (approx)", "1000 approx"),
        ("1, 000", "1 000"),  # "1, 000" has no digit,digit: the comma touches a space, so it is deleted
        ("red,blue", "red blue"),  # a comma touching no space becomes a space
        ("red, blue", "red blue"),
        ("black-and-white", "black and white"),
        ("t-shirt, jeans", "t shirt jeans"),  # "-" touches no space anywhere: space; "," does: deleted
        ("t-shirt - jeans", "tshirt jeans"),  # " -" is in the text: every "-" is deleted, also in "t-shirt"
        ("two\tdogs\n", "2 dogs"),  # tabs and newlines become spaces
        ("." * 40, "." * 8),  # re.UNICODE lands in `count`: only the first 32 periods are deleted
        ("\u0663,\u0664", "\u0663 \u0664"),  # Python 2's \d is [0-9]: Arabic-Indic digits are no digit,digit
    ],
)
def test_normalisation_hand_computed(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        # leave-one-out: k of 10 annotators said it -> (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
        ("red", ["red"] * 4 + ["blue"] * 6, 1.0),  # (4 * 1 + 6 * 1) / 10
        ("red", ["red"] * 3 + ["blue"] * 7, 0.9),  # (3 * 2/3 + 7 * 1) / 10
        ("red", ["red"] * 2 + ["blue"] * 8, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
        ("red", ["red"] * 1 + ["blue"] * 9, 0.3),  # (1 * 0 + 9 * 1/3) / 10
        ("red", ["blue"] * 9 + ["green"], 0.0),
        ("red", ["red", "blue"], 1 / 6),  # n = 2: (0 + 1/3) / 2
        ("red", ["red", "red", "blue"], 4 / 9),  # n = 3: (1/3 + 1/3 + 2/3) / 3
        # normalisation of both sides (the answers differ, so it applies)
        ("two", ["2"] * 3 + ["3"] * 7, 0.9),  # number word vs digit
        ("a frisbee", ["frisbee"] * 9 + ["disc"], 1.0),  # article
        ("yes.", ["yes"] * 9 + ["no"], 1.0),  # punctuation
        ("yes!", ["yes"] * 2 + ["no"] * 8, 0.6),
        ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),  # contraction
        ("1,000", ["1000"] * 2 + ["100"] * 8, 0.6),  # comma between digits
        ("1, 000", ["1000"] * 2 + ["100"] * 8, 0.0),  # "1 000" is not "1000"
        ("two\tdogs\n", ["2 dogs"] * 3 + ["3 dogs"] * 7, 0.9),  # tab/newline
        # the all-identical quirk: 10 identical answers -> no punctuation/digit/article processing at all
        ("Yes", ["yes"] * 10, 0.0),
        ("yes.", ["yes"] * 10, 0.0),
        ("two", ["2"] * 10, 0.0),
        (" yes\n", ["yes"] * 10, 1.0),  # whitespace is cleaned always
        ("Yes", ["yes"] * 9 + ["Yes"], 1.0),  # answers differ -> processed -> 10 matches
        ("Yes", ["yes"] * 9 + ["yes\t"], 0.0),  # identical once whitespace is cleaned -> not processed
        ("none", ["0"] * 9 + ["zero"], 1.0),  # processed: every answer is "0"
        # one answer (Shapes): exact match after the normalisation of both sides
        ("Two.", "two", 1.0),
        ("a cube", "cube", 1.0),
        ("Red", ["red"], 1.0),
        ("red", "blue", 0.0),
    ],
)
def test_vqa_score_hand_computed(prediction, answers, expected):
    assert vqa_score(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_score_needs_an_answer():
    with pytest.raises(ValueError, match="at least one ground-truth answer"):
        vqa_score("red", [])


# --------------------------------------------------------------------------- per type


@pytest.mark.parametrize(
    "question_type, suffix",
    [("yes/no", "yes_no"), ("number", "number"), ("other", "other"), ("what color is the", "what_color_is_the"),
     ("what is the man's", "what_is_the_man_s"), ("count", "count")],
)  # fmt: skip
def test_type_suffix(question_type, suffix):
    assert type_suffix(question_type) == suffix


def test_types_that_collide_as_metric_names_are_refused():
    with pytest.raises(ValueError, match="'yes/no' and 'yes no' both become the metric name 'acc_yes_no'"):
        accuracy_by_type([1.0, 0.0], ["yes/no", "yes no"])


# (prediction, 10 annotator answers, VQAv2 answer type, accuracy worked out by hand)
BATCH = [
    ("yes", ["yes"] * 10, "yes/no", 1.0),
    ("no", ["yes"] * 8 + ["no"] * 2, "yes/no", 0.6),
    ("two", ["2"] * 3 + ["3"] * 7, "number", 0.9),
    ("3", ["2"] * 10, "number", 0.0),
    ("a frisbee", ["frisbee"] * 9 + ["disc"], "other", 1.0),
    ("Red.", ["red"] * 10, "other", 0.0),  # the all-identical quirk
    ("dont know", ["don't know"] + ["unknown"] * 9, "other", 0.3),
]
BATCH_METRICS = {  # by hand from the last column
    "acc": 3.8 / 7,
    "acc_number": 0.9 / 2,
    "acc_other": 1.3 / 3,
    "acc_yes_no": 1.6 / 2,
}


def test_a_batch_mean_and_per_answer_type_by_hand():
    scores = [vqa_score(p, a) for p, a, _, _ in BATCH]
    assert scores == pytest.approx([s for *_, s in BATCH], abs=1e-12)
    metrics = accuracy_by_type(scores, [t for _, _, t, _ in BATCH])
    assert list(metrics) == sorted(BATCH_METRICS)
    assert metrics == pytest.approx(BATCH_METRICS, abs=1e-12)  # unrounded fractions, not percentages
    assert accuracy_by_type(scores, None) == pytest.approx({"acc": 3.8 / 7}, abs=1e-12)


def test_the_vqa_protocol_reports_the_batch_by_hand(monkeypatch):
    """`vqa` end to end on the batch above, with a head that answers each question with its prediction."""
    vocabulary = sorted({p for p, *_ in BATCH})
    flat = list(range(len(BATCH)))  # question i of the one image
    data = {"questions": [[f"q{i}" for i in flat]], "answers": [[a[0] for _, a, _, _ in BATCH]],
            "all_answers": [[a for _, a, _, _ in BATCH]], "question_types": [[t for _, _, t, _ in BATCH]]}  # fmt: skip

    def batches(model, inputs, questions, n, batch_size):  # every question in one batch; ids carry its index
        yield [(0, q) for q in flat], torch.tensor(flat)[:, None], torch.ones(len(flat), 1), None

    class Head(torch.nn.Module):
        question_field = "question"

        def answer_logits(self, model, batch, text, image):  # (b, A): one-hot on each question's prediction
            want = [vocabulary.index(BATCH[i][0]) for i in batch["question_ids"][:, 0].tolist()]
            return torch.nn.functional.one_hot(torch.tensor(want), len(vocabulary)).float()

    module = torch.nn.Module()
    module.objectives, module.model = torch.nn.ModuleDict({"vqa": Head()}), None
    inputs = SimpleNamespace(dataset=SimpleNamespace(column=data.get), answers=vocabulary)
    monkeypatch.setattr(vqa_module, "question_batches", batches)
    metrics, predictions = vqa(module, inputs, batch_size=8, max_images=None, return_predictions=True)
    assert metrics == pytest.approx({f"vqa/{k}": v for k, v in BATCH_METRICS.items()}, abs=1e-12)
    assert [p for *_, p in predictions] == [p for p, *_ in BATCH]


# --------------------------------------------------------------------------- equality with the official code

WORDS = ["yes", "no", "red", "frisbee", "dogs", "know", "table", "shirt", "Yes", "RED", "eleven", "12", "3.5", "1,000"]
NUMBERS = list(DIGIT_OF) + [str(i) for i in range(11)]
CONTRACTED = ["dont", "don't", "cant", "Im", "im", "somebody'd", "somebodyd", "yall'll", "wont", "won't", "oclock"]
ARTICLES = ["a", "an", "the", "A", "The"]
MARKS = list(OFFICIAL.punct) + [".", "..", ":", "'", "#", "&"]
SPACES = [" ", " ", " ", "  ", "\t", "\n", ""]


def _random_answer(rng: random.Random) -> str:
    """A short answer of words, number words, digits, articles, contractions and punctuation, joined by
    spaces, tabs, newlines or nothing, sometimes with marks at the ends."""
    pools = [WORDS, NUMBERS, CONTRACTED, ARTICLES, MARKS]
    tokens = [rng.choice(rng.choices(pools, weights=[4, 3, 2, 2, 2])[0]) for _ in range(rng.randint(1, 4))]
    text = tokens[0] + "".join(rng.choice(SPACES) + t for t in tokens[1:])
    return rng.choice(["", " ", "\n"]) + text + rng.choice(["", "", ".", "!", "?", " ", "\t"])


def _variant(text: str, rng: random.Random) -> str:
    """`text` written another way that the official normalisation may or may not undo (case, a number word
    for its digit, an article, end punctuation, extra whitespace)."""
    words = text.split()
    word_of = {v: k for k, v in DIGIT_OF.items() if k != "none"}
    change = rng.choice(["upper", "number", "article", "period", "space", "comma", "same"])
    if change == "upper":
        return text.upper() if rng.random() < 0.5 else text.capitalize()
    if change == "number":
        return " ".join(DIGIT_OF.get(w, word_of.get(w, w)) for w in words)
    if change == "article":
        return rng.choice(ARTICLES) + " " + text
    if change == "period":
        return text + rng.choice([".", "!", "?"])
    if change == "space":
        return "\t" + "  ".join(words) + "\n"
    if change == "comma":
        return ",".join(words)
    return text


def _random_question(rng: random.Random) -> tuple[str, list[str]]:
    """A prediction and n annotator answers: variants of a few base answers, the prediction among them or
    a variant of one of them or a fresh random string; sometimes all answers identical."""
    n = rng.choice([10, 10, 10, 2, 3, 5])
    bases = [_random_answer(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        answers = [bases[0]] * n  # the quirk's branch
    else:
        answers = [_variant(rng.choice(bases), rng) for _ in range(n)]
    roll = rng.random()
    if roll < 0.4:
        prediction = _variant(rng.choice(bases), rng)
    elif roll < 0.7:
        prediction = rng.choice(answers)
    else:
        prediction = _random_answer(rng)
    return prediction, answers


def test_vqa_score_equals_the_official_code_on_generated_strings():
    rng = random.Random(0)
    cases = [_random_question(rng) for _ in range(300)]
    scores = []
    for prediction, answers in cases:
        want = OFFICIAL.question_accuracy(prediction, answers)
        got = vqa_score(prediction, answers)
        assert got == want, (prediction, answers, got, want)  # the same float, not only close
        scores.append(got)
        for text in [prediction, *answers]:
            clean = text.replace("\n", " ").replace("\t", " ").strip()
            assert normalize_answer(text) == OFFICIAL.processDigitArticle(OFFICIAL.processPunctuation(clean))
            assert process_punctuation(text) == OFFICIAL.processPunctuation(text)
            assert process_digit_article(text) == OFFICIAL.processDigitArticle(text)
    # the cases reach every branch: both sides of the quirk, partial credit, and normalisation that matters
    assert sum(len(set(a)) == 1 for _, a in cases) >= 30
    assert {0.0, 1.0} <= set(scores) and len(set(scores)) >= 5
    assert sum(normalize_answer(p) != p.strip() and s > 0 for (p, _), s in zip(cases, scores)) >= 20
