"""ITC top-k re-ranking by ITM (mmbench.metrics.retrieval): ALBEF's rule (`itm`: the ITM positive logit
alone) and BLIP's (`itm_itc`: that logit plus the ITC cosine) on a hand-built 4 x 6 case whose rankings
and recalls are worked out below; then the protocol on a tiny model: every image and caption encoded
once, every candidate pair fused once, the headline names following `rerank_rule`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.metrics import retrieval as retrieval_module
from mmbench.metrics.common import Inputs, column, encode_images, encode_texts, eval_mode
from mmbench.metrics.retrieval import (
    candidate_pairs,
    match_logits,
    recall_from_orders,
    recall_metrics,
    rerank,
    rerank_order,
    top_indices,
)
from mmbench.metrics.suite import protocol
from mmbench.models.outputs import Features
from mmbench.objectives import itm as itm_objective

# 4 images x 6 captions; captions 0, 1 -> image 0, 2, 3 -> image 1, 4 -> image 2, 5 -> image 3
TXT2IMG = torch.tensor([0, 0, 1, 1, 2, 3])
# ITC cosine similarities (image x caption); multiples of 1/8, so every sum below is exact
SIM = torch.tensor(
    [
        [0.5, 0.0, 0.75, 0.625, 0.125, 0.25],  # ITC order 2 3 0 | 5 4 1
        [0.0, 0.25, 0.5, 0.125, 0.75, 0.625],  # 4 5 2 | 1 3 0
        [0.125, 0.0, 0.5, 0.375, 0.75, 0.25],  # 4 2 3 | 5 0 1
        [0.75, 0.5, 0.625, 0.0, 0.125, 0.25],  # 0 2 1 | 5 4 3
    ]
)
X = 9.0  # a pair outside both directions' top k: were it fused and used, it would rank first
# ITM positive logits of the pairs in the ITC top 3 of an image or the top 2 of a caption
ITM = torch.tensor(
    [
        [1.125, X, 1.0, 0.0, X, 0.0],
        [X, 0.25, 2.125, X, 2.0, 0.5],  # (1, 3) is a true pair outside the top k: its 9.0 must not count
        [X, X, 1.125, 0.0, 1.0, X],
        [1.0, 1.375, 0.5, X, X, X],  # so is (3, 5)
    ]
)
K_I2T, K_T2I = 3, 2

# image -> caption, worked out by hand (| ends the re-ranked top 3; the rest keep ITC order)
I2T = {
    # image 0: ITM 1.125 (c0), 1.0 (c2), 0.0 (c3); + ITC: 1.625, 1.75, 0.625
    # image 1: ITM 2.125 (c2), 2.0 (c4), 0.5 (c5); + ITC: 2.625, 2.75, 1.125
    # image 2: ITM 1.125 (c2), 1.0 (c4), 0.0 (c3); + ITC: 1.625, 1.75, 0.375
    # image 3: ITM 1.375 (c1), 1.0 (c0), 0.5 (c2); + ITC: 1.875, 1.75, 1.125
    "itc": [[2, 3, 0, 5, 4, 1], [4, 5, 2, 1, 3, 0], [4, 2, 3, 5, 0, 1], [0, 2, 1, 5, 4, 3]],
    "itm": [[0, 2, 3, 5, 4, 1], [2, 4, 5, 1, 3, 0], [2, 4, 3, 5, 0, 1], [1, 0, 2, 5, 4, 3]],
    "itm_itc": [[2, 0, 3, 5, 4, 1], [4, 2, 5, 1, 3, 0], [4, 2, 3, 5, 0, 1], [1, 0, 2, 5, 4, 3]],
}
# caption -> image (SIM.T; equal similarities in image order: caption 4's images 1, 2; caption 5's 0, 2, 3)
T2I = {
    # c0: ITM 1.0 (i3), 1.125 (i0); + ITC 1.75, 1.625      c3: ITM 0.0 (i0), 0.0 (i2): equal, ITC order
    "itc": [[3, 0, 2, 1], [3, 1, 0, 2], [0, 3, 1, 2], [0, 2, 1, 3], [1, 2, 0, 3], [1, 0, 2, 3]],
    "itm": [[0, 3, 2, 1], [3, 1, 0, 2], [0, 3, 1, 2], [0, 2, 1, 3], [1, 2, 0, 3], [1, 0, 2, 3]],
    "itm_itc": [[3, 0, 2, 1], [3, 1, 0, 2], [0, 3, 1, 2], [0, 2, 1, 3], [1, 2, 0, 3], [1, 0, 2, 3]],
}
# rank of the first true caption of each image / of each caption's image, then Recall@1, @2, @5
#   i2t ranks: itc 3 3 1 4, itm 1 1 2 4, itm_itc 2 2 1 4;  t2i ranks: itc 2 3 3 3 2 4, itm 1 3 3 3 2 4,
#   itm_itc 2 3 3 3 2 4 (Recall@5 is 1 everywhere: every true match is within the first 4)
RECALLS = {
    "itc": {"i2t_r1": 1 / 4, "i2t_r2": 1 / 4, "t2i_r1": 0.0, "t2i_r2": 2 / 6},
    "itm": {"i2t_r1": 2 / 4, "i2t_r2": 3 / 4, "t2i_r1": 1 / 6, "t2i_r2": 2 / 6},
    "itm_itc": {"i2t_r1": 1 / 4, "i2t_r2": 3 / 4, "t2i_r1": 0.0, "t2i_r2": 2 / 6},
}
KS = (1, 2, 5)


def _i2t_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return ITM[q, d]


def _t2i_scores(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return ITM[d, q]  # query = caption, document = image


def _orders(rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) re-ranked orders through `rerank_order`, from the ITC orders and the candidates' scores."""
    out = []
    for sim, itm, k in ((SIM, ITM, K_I2T), (SIM.T, ITM.T, K_T2I)):
        order = top_indices(sim, sim.shape[1])
        top = order[:, :k]
        out.append(rerank_order(order, sim.gather(1, top), itm.gather(1, top), rule))
    return out[0], out[1]


@pytest.mark.parametrize("rule", ["itm", "itm_itc"])
def test_rules_rank_the_top_k_as_worked_out_by_hand(rule):
    i2t, t2i = _orders(rule)
    assert i2t.tolist() == I2T[rule]
    assert t2i.tolist() == T2I[rule]
    # the score-matrix form ranks the same way (minus the rank: 0, -1, ...)
    scores = rerank(SIM, K_I2T, _i2t_scores, rule)
    assert scores.argsort(dim=1, descending=True).tolist() == I2T[rule]
    assert scores[0].tolist() == [-1.0 * I2T[rule][0].index(d) for d in range(6)]
    assert rerank(SIM.T, K_T2I, _t2i_scores, rule).argsort(dim=1, descending=True).tolist() == T2I[rule]


def test_the_two_rules_differ_where_itc_outweighs_an_itm_margin():
    """Image 0: ALBEF puts its caption 0 first (ITM 1.125 > 1.0); BLIP adds ITC (0.5 vs 0.75) and puts
    caption 2 first. The rules are different functions of the same fused logits."""
    assert I2T["itm"][0][0] == 0 and I2T["itm_itc"][0][0] == 2
    assert _orders("itm")[0].tolist() != _orders("itm_itc")[0].tolist()


def test_outside_the_top_k_nothing_is_scored_and_itc_order_is_kept():
    asked = []

    def score(q, d):
        asked.append(torch.stack([q, d], 1))
        return ITM[q, d]

    out = rerank(SIM, K_I2T, score, "itm").argsort(dim=1, descending=True)
    pairs = torch.cat(asked)  # (Q * k, 2) every pair score_fn was asked for
    assert sorted(map(tuple, pairs.tolist())) == sorted((q, d) for q in range(4) for d in I2T["itc"][q][:K_I2T])
    # ranks k+1.. are the ITC order of the rest (not column order: image 3's rest is 5 4 3)
    assert out[:, K_I2T:].tolist() == [row[K_I2T:] for row in I2T["itc"]]
    assert out[3, K_I2T:].tolist() == [5, 4, 3]
    # a re-ranked candidate with the lowest ITM logit still ranks above every other document
    low = ITM.clone()
    low[0, 3] = -1e6
    assert rerank(SIM, K_I2T, lambda q, d: low[q, d], "itm")[0].argsort(descending=True).tolist()[:3] == [0, 2, 3]


@pytest.mark.parametrize("k", [6, 100])
def test_k_at_least_the_gallery_is_the_full_itm_ranking(k):
    itm = torch.tensor([[7, 3, 12, 0, 21, 9], [1, 16, 5, 22, 10, 14], [19, 2, 8, 13, 23, 4], [6, 18, 11, 15, 20, 17]])
    itm = itm.float()  # distinct integers; + ITC in [0, 0.75] keeps them distinct and in the same order
    albef = rerank(SIM, k, lambda q, d: itm[q, d], "itm").argsort(dim=1, descending=True)
    blip = rerank(SIM, k, lambda q, d: itm[q, d], "itm_itc").argsort(dim=1, descending=True)
    assert torch.equal(albef, itm.argsort(dim=1, descending=True))
    assert torch.equal(blip, (itm + SIM).argsort(dim=1, descending=True))
    assert albef[0].tolist() == [4, 2, 5, 0, 1, 3]  # 21, 12, 9, 7, 3, 0
    assert torch.equal(
        rerank(SIM, 0, lambda q, d: itm[q, d], "itm").argsort(dim=1, descending=True), top_indices(SIM, 6)
    )


@pytest.mark.parametrize("rule", ["itc", "itm", "itm_itc"])
def test_recalls_worked_out_by_hand(rule):
    i2t, t2i = (torch.tensor(I2T[rule]), torch.tensor(T2I[rule]))
    if rule != "itc":
        assert [o.tolist() for o in _orders(rule)] == [I2T[rule], T2I[rule]]
    out = recall_from_orders(i2t, t2i, TXT2IMG, ks=KS)
    expected = {**RECALLS[rule], "i2t_r5": 1.0, "t2i_r5": 1.0}
    assert out == pytest.approx({**expected, "rmean": sum(expected.values()) / 6})
    # the same from score matrices, and from the first max(ks) columns only
    scores = (-torch.arange(6.0)).expand(4, 6).clone()
    scores = torch.empty_like(scores).scatter_(1, i2t, scores)
    t2i_scores = torch.empty(6, 4).scatter_(1, t2i, (-torch.arange(4.0)).expand(6, 4).clone())
    assert recall_metrics(scores, TXT2IMG, t2i_scores, ks=KS) == pytest.approx(out)
    assert recall_from_orders(i2t[:, :5], t2i, TXT2IMG, ks=KS) == out


def test_itc_alone_is_the_similarity_ranking():
    assert top_indices(SIM, 6).tolist() == I2T["itc"] and top_indices(SIM.T, 4).tolist() == T2I["itc"]
    assert recall_metrics(SIM, TXT2IMG, ks=KS) == pytest.approx(
        recall_from_orders(torch.tensor(I2T["itc"]), torch.tensor(T2I["itc"]), TXT2IMG, ks=KS)
    )


def test_a_pair_in_both_directions_top_k_is_fused_once():
    """The 24 candidates (4 images x top 3 captions, 6 captions x top 2 images) hold 14 distinct pairs:
    exactly those ITM gives a score to above (the others are X); 10 are candidates both ways."""
    top_i2t, top_t2i = top_indices(SIM, K_I2T), top_indices(SIM.T, K_T2I)
    pairs, which = candidate_pairs(top_i2t, top_t2i)
    assert {(p // 6, p % 6) for p in pairs.tolist()} == {(i, t) for i in range(4) for t in range(6) if ITM[i, t] != X}
    assert len(pairs) == 14 and torch.equal(pairs, pairs.sort().values)
    i2t = (pairs[which[:12]].view(4, 3) % 6, pairs[which[:12]].view(4, 3) // 6)  # (caption, image)
    t2i = (pairs[which[12:]].view(6, 2) // 6, pairs[which[12:]].view(6, 2) % 6)  # (image, caption)
    assert torch.equal(i2t[0], top_i2t) and torch.equal(i2t[1], torch.arange(4)[:, None].expand(4, 3))
    assert torch.equal(t2i[0], top_t2i) and torch.equal(t2i[1], torch.arange(6)[:, None].expand(6, 2))


def test_the_itm_score_is_the_positive_class_logit_not_the_log_odds():
    """ALBEF and BLIP rank by itm_head(fused)[:, 1]. The log-odds logit1 - logit0 (`ITM.pair_score`) can rank
    the other way: pair 0 has logits (0, 1), pair 1 has (-2, 0.5); positive logits 1 > 0.5, log-odds 1 < 2.5."""
    itm = itm_objective.ITM(dim=2)
    with torch.no_grad():
        itm.head.weight.copy_(torch.eye(2))  # logits = the fused pooled vector
        itm.head.bias.zero_()
    fusion = SimpleNamespace(fuse=lambda text, image: SimpleNamespace(pooled=text.pooled + image.pooled))
    pooled = torch.tensor([[0.0, 1.0], [-2.0, 0.5]])
    text = Features(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.bool), pooled)
    image = Features(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 2))
    pair = torch.tensor([0, 1])
    assert match_logits(itm, fusion, text, image, pair, pair, batch_size=1).tolist() == [1.0, 0.5]
    assert itm.pair_score(fusion, text, image).tolist() == [1.0, 2.5]


def test_an_unknown_rule_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"rerank_rule='albef' is not a rule; use itm \(ALBEF.*itm_itc \(BLIP"):
        protocol("retrieval", rerank_rule="albef")(None, None, batch_size=8)


# --------------------------------------------------------------------------- the protocol on a tiny model


def test_each_input_encoded_once_each_candidate_pair_fused_once(tiny_cfg, monkeypatch):
    """Two calls (one per rule) on 12 images: each call encodes every image and caption once, fuses
    exactly the union of both directions' ITC top k, each pair once, in batches of pair_batch_size."""
    cfg = tiny_cfg("objective=[itc,itm]")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    inputs = Inputs(dm.datasets["test"], dm.tokenizer)
    model = module.model
    encoded = {"images": 0, "texts": 0}
    fused: list[int] = []  # pairs per fusion call
    encode_image, encode_text, fuse = model.encode_image, model.encode_text, model.fuse

    def count_images(batch, *args, **kwargs):
        encoded["images"] += len(batch["pixel_values"])
        return encode_image(batch, *args, **kwargs)

    def count_texts(input_ids, *args, **kwargs):
        encoded["texts"] += len(input_ids)
        return encode_text(input_ids, *args, **kwargs)

    seen_pairs: list[torch.Tensor] = []
    match_logits = retrieval_module.match_logits

    def record_pairs(scorer, model_, text, image, text_idx, image_idx, batch_size):
        seen_pairs.append(torch.stack([image_idx, text_idx], 1))
        return match_logits(scorer, model_, text, image, text_idx, image_idx, batch_size)

    monkeypatch.setattr(model, "encode_image", count_images)
    monkeypatch.setattr(model, "encode_text", count_texts)
    monkeypatch.setattr(
        model, "fuse", lambda text, image, *a, **kw: fused.append(len(text.tokens)) or fuse(text, image)
    )
    monkeypatch.setattr(retrieval_module, "match_logits", record_pairs)

    k, n_images = 5, 12
    outs = {
        rule: protocol("retrieval", rerank_k=k, rerank_rule=rule, max_images=n_images, pair_batch_size=16)(
            module, inputs, batch_size=5
        )
        for rule in ("itm", "itm_itc")
    }
    out = outs["itm"]
    n_texts = int(out["retrieval/num_texts"])
    assert encoded == {"images": 2 * n_images, "texts": 2 * n_texts}  # once per image / caption per call
    pairs = seen_pairs[0]
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)  # no pair fused twice
    assert len(pairs) <= (n_images + n_texts) * k and sum(fused) == 2 * len(pairs)
    assert max(fused) <= 16
    # the candidates are exactly the ITC top k of every image and of every caption, each pair once
    captions = column(dm.datasets["test"], "captions")
    texts = [c for r in range(n_images) for c in captions[r]]
    with eval_mode(module):
        image, text = encode_images(model, inputs, range(n_images), 64), encode_texts(model, inputs, texts, 64)
        text_emb, image_emb = module.objectives["itc"].embed(text.pooled, image.pooled)
    sim = image_emb @ text_emb.T  # (N_img, N_txt)
    expected = {(i, t) for i in range(n_images) for t in top_indices(sim, k)[i].tolist()}
    expected |= {(i, t) for t in range(n_texts) for i in top_indices(sim.T, k)[t].tolist()}
    assert {tuple(p) for p in pairs.tolist()} == expected
    # both rules from the same fusions; the headline is the configured rule's, under the old names
    for rule, o in outs.items():
        for name in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rmean"):
            assert o[f"retrieval/{name}"] == o[f"retrieval/{rule}/{name}"]
            assert o[f"retrieval/itc/{name}"] == out[f"retrieval/itc/{name}"]
            assert o[f"retrieval/itm/{name}"] == out[f"retrieval/itm/{name}"]
            assert o[f"retrieval/itm_itc/{name}"] == out[f"retrieval/itm_itc/{name}"]
    # ITC ranking alone: no fusion, no sub-names
    fused.clear()
    only = protocol("retrieval", rerank_k=0, max_images=n_images)(module, inputs, batch_size=5)
    assert not fused and "retrieval/itm/rmean" not in only and "retrieval/itc/rmean" not in only
    assert only["retrieval/rmean"] == out["retrieval/itc/rmean"]


def test_config_validation_refuses_an_unknown_rerank_rule():
    from mmbench.config import ConfigError
    from mmbench.validation import validate
    from tests.conftest import compose_cfg

    with pytest.raises(ConfigError, match=r"eval.retrieval.rerank_rule=blip: valid rules are itm, itm_itc"):
        validate(compose_cfg(["eval.retrieval.rerank_rule=blip"]))
    validate(compose_cfg(["eval=full", "eval.retrieval.rerank_rule=itm_itc"]))
