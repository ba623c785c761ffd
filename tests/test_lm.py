"""LM (captioning) objective: known-answer loss, no future-token leakage through whole models,
config refusals, greedy / beam-search generation, an overfit run and the real pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from mmbench.builder import build_datamodule, build_model, data_kwargs
from mmbench.config import ConfigError
from mmbench.data.datamodule import DataInfo
from mmbench.models.outputs import Features, Fused
from mmbench.objectives.context import StepContext
from mmbench.objectives.lm import LM, decode
from mmbench.objectives.mlm import MLMHead
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import TINY, compose_cfg
from tests.test_layers_and_model import D, inputs, tiny_model

PAD, CLS, SEP = 0, 2, 3


class PassThroughHead(nn.Module):
    """Replaces the LM head: the fused 'text tokens' already are the logits."""

    def forward(self, x, embedding):
        return x


class FixedLogitsModel(nn.Module):
    """A model whose fused text tokens are a fixed logits tensor; records the causal flags it got."""

    word_embeddings = None

    def __init__(self, logits):
        super().__init__()
        self.logits, self.calls = logits, []

    def encode_text(self, ids, mask, causal=False):
        self.calls.append(("encode_text", causal))
        return Features(ids[..., None].float(), mask.bool(), ids.float())

    def fuse(self, text, image, causal_text=False):
        self.calls.append(("fuse", causal_text))
        return Fused(text_tokens=self.logits, image_tokens=None, pooled=None)


def _known_case():
    ids = torch.tensor([[2, 1, 1, 3], [2, 1, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    probs = torch.tensor(
        [
            [[0.1, 0.6, 0.2, 0.1], [0.3, 0.25, 0.25, 0.2], [0.1, 0.1, 0.1, 0.7], [0.97, 0.01, 0.01, 0.01]],
            [[0.1, 0.5, 0.3, 0.1], [0.2, 0.2, 0.2, 0.4], [0.01, 0.01, 0.97, 0.01], [0.97, 0.01, 0.01, 0.01]],
        ]
    )  # (B, T, V): row t is the prediction of token t+1
    return ids, mask, probs


def _lm_on(logits, label_smoothing=0.0):
    lm = LM(dim=4, vocab_size=4, pad_id=PAD, label_smoothing=label_smoothing)
    lm.head = PassThroughHead()
    model = FixedLogitsModel(logits)
    return lm, model


def test_known_answer_loss_padding_ignored_and_label_smoothing():
    ids, mask, probs = _known_case()
    batch = {"input_ids": ids, "attention_mask": mask}
    lm, model = _lm_on(probs.log())
    out = lm(model, batch, None, None, StepContext())
    # the 5 real next tokens have probabilities .6 .25 .7 (row 0) and .5 .4 (row 1); row 1's pad target is ignored
    ce = -(math.log(0.6) + math.log(0.25) + math.log(0.7) + math.log(0.5) + math.log(0.4)) / 5
    assert math.isclose(out.loss.item(), ce, rel_tol=1e-6)
    assert math.isclose(out.metrics["ppl"].item(), math.exp(ce), rel_tol=1e-6)
    assert math.isclose(out.metrics["acc"].item(), 4 / 5, rel_tol=1e-6)  # row 0, t=1: argmax 0 misses target 1
    # the text is re-encoded causally and fused causally
    assert model.calls == [("encode_text", True), ("fuse", True)]

    # predictions at positions with no real next token never count
    other = probs.clone()
    other[0, 3] = other[1, 2] = other[1, 3] = torch.tensor([0.01, 0.01, 0.01, 0.97])
    lm2, model2 = _lm_on(other.log())
    assert math.isclose(lm2(model2, batch, None, None, StepContext()).loss.item(), ce, rel_tol=1e-6)

    # label smoothing: (1 - eps) * CE + eps * mean over classes of -log p, as F.cross_entropy says
    eps = 0.1
    lm_s, model_s = _lm_on(probs.log(), label_smoothing=eps)
    out_s = lm_s(model_s, batch, None, None, StepContext())
    valid = mask[:, 1:].bool()
    logp = probs.log()[:, :-1][valid]  # (5, V)
    targets = ids[:, 1:][valid]
    by_hand = (1 - eps) * ce + eps * (-logp.mean(1)).mean().item()
    assert math.isclose(out_s.loss.item(), by_hand, rel_tol=1e-6)
    reference = F.cross_entropy(logp, targets, label_smoothing=eps).item()
    assert math.isclose(out_s.loss.item(), reference, rel_tol=1e-6)
    assert out_s.loss.item() != pytest.approx(ce)
    assert math.isclose(out_s.metrics["ppl"].item(), math.exp(ce), rel_tol=1e-6)  # ppl stays unsmoothed


def test_head_is_mlm_head_tied_to_word_embeddings():
    model = tiny_model().train()
    ids, mask, batch = inputs(B=4, T=8)
    batch.update(input_ids=ids, attention_mask=mask)
    lm = LM(dim=D, vocab_size=50, pad_id=PAD)
    assert type(lm.head) is MLMHead
    out = lm(model, batch, None, model.encode_image(batch), StepContext())
    assert math.log(50) * 0.5 < out.loss.item() < math.log(50) * 2  # near uniform at init
    out.loss.backward()
    assert model.text_encoder.word_embeddings.weight.grad.abs().sum() > 0  # tied decoder
    assert not any(p is model.text_encoder.word_embeddings.weight for p in lm.parameters())


# ------------------------------------------------------------------------------------ leakage

INFO = DataInfo.of_vocab(50, max_text_len=16, image_size=48)  # pad id 0 = PAD
SMALL = [
    "model.sizes.tiny.dim=32",
    "model.sizes.tiny.heads=2",
    "model.sizes.tiny.text_depth=1",
    "model.sizes.tiny.vision_depth=1",
    "model.sizes.tiny.fusion_depth=2",
    "data.max_text_len=16",
]


def _built(model_name: str):
    cfg = compose_cfg([f"model={model_name}", "objective=[lm]", *SMALL])
    validate(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, INFO).eval()
    lm = instantiate(cfg.objective.lm, **data_kwargs(cfg.objective.lm, INFO)).eval()
    return model, lm


@pytest.mark.parametrize(
    "model_name, fusion",
    [
        ("vilt", "MergedFusion"),
        ("albef", "TextCrossAttentionFusion"),
        ("flamingo", "GatedCrossAttentionFusion"),
    ],
)
def test_no_future_token_leakage_through_the_whole_model(model_name, fusion):
    model, lm = _built(model_name)
    assert type(model.fusion).__name__ == fusion and len(model.text_encoder.stack.blocks) >= 1
    if fusion == "GatedCrossAttentionFusion":  # open the gates so the image path is exercised
        with torch.no_grad():
            for block in model.fusion.xattn_blocks:
                block.alpha_xattn.fill_(1.0)
                block.alpha_ffn.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    B, T = 2, 8
    ids = torch.randint(7, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    batch = {"pixel_values": torch.randn(B, 3, 48, 48, generator=g)}
    with torch.no_grad():
        image = model.encode_image(batch)
        base = lm.logits(model, ids, mask, image)  # (B, T, vocab)
        for t in (0, 3, 6):
            changed = ids.clone()
            changed[:, t + 1] = (changed[:, t + 1] - 7 + 11) % 43 + 7
            new = lm.logits(model, changed, mask, image)
            torch.testing.assert_close(new[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert (new[:, t + 1 :] - base[:, t + 1 :]).abs().amax(-1).gt(1e-4).all(), t
        # the captions are conditioned on the image
        other = model.encode_image({"pixel_values": torch.randn(B, 3, 48, 48, generator=g)})
        assert not torch.allclose(lm.logits(model, ids, mask, other), base, atol=1e-4)


@pytest.mark.parametrize(
    "model_name, missing",
    [
        ("vilbert", "causal_text"),  # coattention
        ("lxmert", "causal_text"),  # cross_encoder
        ("clip", "text_tokens, causal_text"),  # none
        ("concat", "text_tokens, causal_text"),  # a vector fusion
    ],
)
def test_config_refuses_lm_without_causal_text_tokens(model_name, missing):
    cfg = compose_cfg([f"model={model_name}", "objective=[lm]"])
    with pytest.raises(ConfigError, match=f"objective 'lm' needs a fusion with {missing}"):
        validate(cfg)


def test_config_refuses_lm_with_a_vector_fusion_override():
    with pytest.raises(ConfigError, match="objective 'lm'"):
        validate(compose_cfg(["objective=[lm]", "fusion=sum"]))


# ---------------------------------------------------------------------------------- generation

BOS, EOS, A, B_, C, DD = 1, 2, 3, 4, 5, 6  # a 7-token vocabulary, 0 = pad


def _table(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """Transition table P[current, next] (7, 7); rows not given are uniform."""
    p = torch.full((7, 7), 1 / 7)
    for cur, nxt in rows.items():
        p[cur] = 1e-6
        for tok, prob in nxt.items():
            p[cur, tok] = prob
    return p / p.sum(1, keepdim=True)


class MarkovModel(nn.Module):
    """p(next | prefix, image) = table[image flag][last token]: sequence likelihoods are known exactly."""

    word_embeddings = None

    def __init__(self, tables: torch.Tensor):
        super().__init__()
        self.log_tables = tables.log()  # (F, V, V)
        self.text_rows = []

    def encode_image(self, batch):
        flag = batch["flag"].float()  # (B,)
        return Features(flag[:, None, None], torch.ones(len(flag), 1, dtype=torch.bool), flag[:, None])

    def encode_text(self, ids, mask, causal=False):
        assert causal
        self.text_rows.append(ids.shape[0])
        return Features(ids[..., None].float(), mask.bool(), ids.float())

    def fuse(self, text, image, causal_text=False):
        assert causal_text
        ids, flag = text.tokens[..., 0].long(), image.pooled[:, 0].long()  # (N, L), (N,)
        return Fused(self.log_tables[flag[:, None], ids], None, None)  # (N, L, V) logits


def _log_likelihood(table: torch.Tensor, seq: list[int]) -> float:
    prev, total = BOS, 0.0
    for tok in seq:
        total += math.log(table[prev, tok])
        prev = tok
    return total


def _markov_lm(tables):
    lm = LM(dim=7, vocab_size=7, pad_id=PAD)
    lm.head = PassThroughHead()
    return lm, MarkovModel(tables)


def test_beam_search_beats_greedy_when_greedy_is_suboptimal():
    # image 0: greedy takes A (.5) but then A -> eos only .4; B (.4) -> eos .95 is twice as likely.
    # image 1: greedy is optimal: C D eos.
    t0 = _table({BOS: {A: 0.5, B_: 0.4, C: 0.1}, A: {C: 0.3, DD: 0.3, EOS: 0.4}, B_: {EOS: 0.95, C: 0.05}})
    t1 = _table({BOS: {C: 0.9, A: 0.1}, C: {DD: 0.9, EOS: 0.1}, DD: {EOS: 0.9, A: 0.1}})
    lm, model = _markov_lm(torch.stack([t0, t1]))
    batch = {"flag": torch.tensor([0, 1])}
    greedy = lm.generate(model, batch, max_len=6, bos_id=BOS, eos_id=EOS)
    assert greedy.tolist() == [[A, EOS, PAD], [C, DD, EOS]]
    model.text_rows.clear()
    beam = lm.generate(model, batch, max_len=6, num_beams=2, bos_id=BOS, eos_id=EOS)
    assert beam.tolist() == [[B_, EOS, PAD], [C, DD, EOS]]
    assert _log_likelihood(t0, [B_, EOS]) > _log_likelihood(t0, [A, EOS])
    assert set(model.text_rows) == {2 * 2}  # every step runs all B*K rows at once
    beam3 = lm.generate(model, batch, max_len=6, num_beams=3, bos_id=BOS, eos_id=EOS)
    assert beam3.tolist() == beam.tolist()
    # one beam is greedy
    image = model.encode_image(batch)
    assert lm.beam_search(model, image, 6, 1, BOS, EOS).tolist() == greedy.tolist()


def test_beam_search_length_normalisation_and_finished_beams():
    # [eos] alone: log .45 = -0.80 (best raw sum); [A, eos]: log(.55 * .7) = -0.95 raw, -0.48 per token.
    table = _table({BOS: {EOS: 0.45, A: 0.55}, A: {EOS: 0.7, B_: 0.3}})
    lm, model = _markov_lm(table[None])
    batch = {"flag": torch.tensor([0])}
    # the finished one-token beam [eos] is kept while [A, ...] is extended; normalised scores pick [A, eos]
    assert lm.generate(model, batch, max_len=5, num_beams=2, bos_id=BOS, eos_id=EOS).tolist() == [[A, EOS]]
    # raw sums (length_penalty=0) prefer the short caption, kept since step 0 as a finished beam
    raw = lm.generate(model, batch, max_len=5, num_beams=2, bos_id=BOS, eos_id=EOS, length_penalty=0.0)
    assert raw.tolist() == [[EOS]]
    # max_len cuts unfinished captions
    long = _table({BOS: {A: 1.0}, A: {A: 1.0}})
    lm, model = _markov_lm(long[None])
    for k in (1, 2):
        assert lm.generate(model, batch, max_len=4, num_beams=k, bos_id=BOS, eos_id=EOS).tolist() == [[A] * 4]


def test_beam_of_one_equals_greedy_on_a_real_model_and_image_encoded_once(monkeypatch):
    model = tiny_model()
    lm = LM(dim=D, vocab_size=50, pad_id=PAD).eval()
    _, _, batch = inputs(B=3)
    calls = []
    encode_image = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda b: calls.append(1) or encode_image(b))
    greedy = lm.generate(model, batch, max_len=8, bos_id=CLS, eos_id=SEP)
    assert greedy.shape[0] == 3 and greedy.shape[1] <= 8
    assert lm.beam_search(model, encode_image(batch), 8, 1, CLS, SEP).tolist() == greedy.tolist()
    calls.clear()
    beam = lm.generate(model, batch, max_len=8, num_beams=3, bos_id=CLS, eos_id=SEP)
    assert len(calls) == 1 and beam.shape[0] == 3 and beam.shape[1] <= 8


# ------------------------------------------------------------------------------ learning it


def test_overfit_few_images_then_greedy_reproduces_captions(cache_dir, tmp_path):
    """ViLT (merged fusion, dim 64, one fusion layer) on 8 Shapes images, one caption each."""
    overrides = [o for o in TINY if not o.startswith("objective.")]
    cfg = compose_cfg(overrides + ["objective=[lm]", "model.sizes.tiny.dim=64"], tmp_path / "run")
    dm = build_datamodule(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, dm.info)
    lm = instantiate(cfg.objective.lm, **data_kwargs(cfg.objective.lm, dm.info))
    ds = dm.datasets["train"]
    first = [int(np.flatnonzero(ds.rows == r)[0]) for r in range(8)]  # first caption of images 0..7
    batch = dm.collate([ds[i] for i in first])
    captions = [ds[i]["caption"].lower() for i in first]
    assert len(set(captions)) == 8
    cls, sep = dm.tokenizer.token_to_id("[CLS]"), dm.tokenizer.token_to_id("[SEP]")
    opt = torch.optim.AdamW([*model.parameters(), *lm.parameters()], lr=1e-3, weight_decay=0.0)
    decoded, beam = [], []
    for step in range(1, 601):  # greedy and beam both exact typically after 100-400 steps
        model.train()
        loss = lm(model, batch, None, model.encode_image(batch), StepContext()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            model.eval()
            decoded = decode(dm.tokenizer, lm.generate(model, batch, max_len=32, bos_id=cls, eos_id=sep))
            if decoded == captions:
                beam = decode(dm.tokenizer, lm.generate(model, batch, max_len=32, num_beams=3, bos_id=cls, eos_id=sep))
                if beam == captions:
                    break
    assert decoded == captions
    assert beam == captions


def test_pipeline_logs_lm_perplexity(tiny_cfg):
    record = run(tiny_cfg("objective=[itc,lm]"))
    assert record["status"] == "completed"
    metrics = record["metrics"]
    assert math.isfinite(metrics["test/lm/ppl"]) and metrics["test/lm/ppl"] > 1
    assert 0 <= metrics["test/lm/acc"] <= 1 and "test/lm/loss" in metrics
