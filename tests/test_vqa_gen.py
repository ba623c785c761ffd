"""Generative VQA (objective vqa_gen, protocol vqa_generative): the collated 'question answer' sequence, a
loss on the answer tokens only (known answer), grouped prompt decoding equal to one question at a time,
the protocol's scoring and pairing on a known answerer, and a tiny run through mmbench-train."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from mmbench.builder import build_datamodule, build_module
from mmbench.metrics.common import Inputs
from mmbench.metrics.suite import protocol
from mmbench.objectives.vqa_gen import GenerativeVQA
from tests.conftest import TINY, compose_cfg
from tests.test_prefix import built, sample
from tests.test_train import _cli


@pytest.fixture
def shapes(cache_dir, tmp_path):
    tiny = [o for o in TINY if not o.startswith("objective.")]
    cfg = compose_cfg(["model=llava", "objective=[lm,vqa_gen]", *tiny], tmp_path / "run")
    return cfg, build_datamodule(cfg)


def test_the_collated_sequence_is_the_question_then_its_answer(shapes):
    _, dm = shapes
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    n = batch["qa_ids"].shape[0]
    for i in range(n):
        start = int(batch["answer_start"][i])
        q_len = int(batch["question_mask"][i].sum())
        assert start == q_len - 1  # the question's [SEP] position
        assert torch.equal(batch["qa_ids"][i, :start], batch["question_ids"][i, :start])  # [CLS] question
        end = int(batch["qa_mask"][i].sum())
        answer = dm.tokenizer.decode(batch["qa_ids"][i, start:end].tolist(), skip_special_tokens=True)
        assert answer == dm.info.answers[int(batch["answer"][i])]  # Shapes answers are all in the vocabulary


def test_the_loss_is_the_cross_entropy_of_the_answer_tokens_only():
    _, model, _ = built("llava", objectives="[lm,vqa_gen]")
    objective = GenerativeVQA(dim=32, vocab_size=50, pad_id=0, lm=model.language_model)
    model.eval()
    ids, mask, batch = sample(B=2, T=8)
    mask[1, 6:] = 0
    start = torch.tensor([5, 3])
    image = model.encode_image(batch)
    out = objective(model, {"qa_ids": ids, "qa_mask": mask, "answer_start": start}, None, image, None)
    logits = objective.logits(model, ids, mask, image)  # (B, T, V): row t scores token t+1
    want = torch.cat([logits[0, 4:7], logits[1, 2:5]])  # targets 5..7 of row 0, 3..5 of row 1 (6, 7 padding)
    targets = torch.cat([ids[0, 5:8], ids[1, 3:6]])
    torch.testing.assert_close(out.loss, F.cross_entropy(want, targets), atol=1e-6, rtol=1e-6)
    # the question is context, not a target: changing the answer-start moves the loss
    other = objective(model, {"qa_ids": ids, "qa_mask": mask, "answer_start": torch.tensor([1, 1])}, None, image, None)
    assert not torch.allclose(other.loss, out.loss)


def test_grouped_prompts_decode_as_each_question_alone():
    _, model, _ = built("llava", objectives="[lm,vqa_gen]")
    objective = GenerativeVQA(dim=32, vocab_size=50, pad_id=0, lm=model.language_model)
    model.eval()
    ids, mask, batch = sample(B=4, T=8)
    mask[1, 5:] = 0
    mask[3, 6:] = 0  # prompt lengths 7, 4, 7, 5: three groups
    with torch.no_grad():
        image = model.encode_image(batch)
        together = objective.generate_answers(model, image, ids, mask, max_len=4, eos_id=3)
        for i in range(4):
            length = int(mask[i].sum()) - 1
            one = objective.greedy(model, image.index(torch.tensor([i])), 4, -1, 3, prompt=ids[i : i + 1, :length])
            assert together[i].tolist() == one[0].tolist(), i
            uncached = objective.generate_answers(
                model, image.index(torch.tensor([i])), ids[i : i + 1], mask[i : i + 1], 4, 3, use_cache=False
            )
            assert uncached[0].tolist() == one[0].tolist(), i


class _Lookup(GenerativeVQA):
    """A known answerer: each question answered with a fixed answer per question text."""

    def __init__(self, table: dict[str, str], tokenizer):
        super().__init__(dim=8, vocab_size=10, pad_id=0)
        self.table, self.tokenizer = table, tokenizer

    def generate_answers(self, model, image, question_ids, question_mask, max_len, eos_id, use_cache=True):
        questions = self.tokenizer.decode_batch(question_ids.tolist(), skip_special_tokens=True)
        return [torch.tensor(self.tokenizer.encode(self.table.get(q, "")).ids[1:]) for q in questions]


def test_the_protocol_scores_each_question_against_its_own_answer(shapes):
    cfg, dm = shapes
    module = build_module(cfg, dm.info)
    split = dm.datasets["test"].split
    questions, answers = split["questions"], split["answers"]
    norm = lambda q: dm.tokenizer.decode(dm.tokenizer.encode(q).ids, skip_special_tokens=True)
    first = {}
    for qs, As in zip(questions, answers):
        for q, a in zip(qs, As):
            first.setdefault(norm(q), a)
    want = Counter(first[norm(q)] == a for qs, As in zip(questions, answers) for q, a in zip(qs, As))
    module.objectives["vqa_gen"] = _Lookup(first, dm.tokenizer)
    inputs = Inputs(dm.datasets["test"], dm.tokenizer, answers=dm.info.answers)
    out = protocol("vqa_generative")(module, inputs, batch_size=7)
    assert 0 < want[True] < sum(want.values())  # a test that can fail both ways
    assert out["vqa_generative/acc"] == pytest.approx(want[True] / sum(want.values()))
    assert out["vqa_generative/in_vocab"] == 1.0


def test_trains_end_to_end_and_the_captioning_protocol_does_not_use_it(cache_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("objective.")]
    res = _cli(
        ["model=llava", "objective=[vqa_gen]", *overrides, "eval.protocols=[vqa_generative,captioning]"], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (record_path,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    metrics = json.loads(record_path.read_text())["metrics"]
    assert 0 <= metrics["test/vqa_generative/acc"] <= 1 and "test/vqa_generative/acc_color" in metrics
    assert "test/captioning/cider" not in metrics  # trained on answers, not captions
