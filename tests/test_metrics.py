"""Evaluation metrics on hand-computed cases and against the maintained libraries (torchmetrics,
pycocoevalcap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.metrics.captioning import caption_scores, tokenize
from mmbench.metrics.diagnostics import holdout_gap
from mmbench.metrics.retrieval import recall_metrics, rerank
from mmbench.metrics.robustness import (
    area_under_curve,
    blank_image,
    corruption,
    patch_dropout,
    robustness,
    text_dropout,
    text_typos,
)
from mmbench.metrics.vqa import vqa_score

# --------------------------------------------------------------------------- retrieval


def test_recall_hand_computed_multi_caption():
    # 2 images, captions 0,1 -> image 0 and 2,3 -> image 1
    txt2img = torch.tensor([0, 0, 1, 1])
    i2t = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.0],  # image 0: best caption is 1 (its own) -> hit at 1
            [0.9, 0.2, 0.1, 0.3],  # image 1: ranking 0, 3, 1, 2 -> its first caption (3) at rank 2
        ]
    )
    out = recall_metrics(i2t, txt2img, ks=(1, 2))
    assert out["i2t_r1"] == 0.5 and out["i2t_r2"] == 1.0
    # t2i = i2t.T: caption 0 -> image 1 (miss), 1 -> 0 (hit), 2 -> 0 (miss), 3 -> 1 (hit)
    assert out["t2i_r1"] == 0.5 and out["t2i_r2"] == 1.0
    assert out["rmean"] == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)


def test_recall_equals_torchmetrics_hit_rate():
    from torchmetrics.retrieval import RetrievalHitRate

    g = torch.Generator().manual_seed(0)
    n_img, per = 20, 3
    txt2img = torch.arange(n_img).repeat_interleave(per)  # (60,)
    sim = torch.randn(n_img, n_img * per, generator=g)
    ours = recall_metrics(sim, txt2img)
    for k in (1, 5, 10):
        # i2t: the query is an image, relevant documents are its captions; hit = any of them in the top k
        hit = RetrievalHitRate(top_k=k)
        idx = torch.arange(n_img)[:, None].expand_as(sim)
        target = txt2img[None, :] == torch.arange(n_img)[:, None]
        assert ours[f"i2t_r{k}"] == pytest.approx(hit(sim.flatten(), target.flatten(), indexes=idx.flatten()).item())
        # t2i: one relevant image per caption, so Recall@K is the hit rate too
        # (torchmetrics' RetrievalRecall(top_k=10) disagrees with both here on 20 documents per query)
        t2i = sim.T
        idx = torch.arange(t2i.shape[0])[:, None].expand_as(t2i)
        target = torch.arange(n_img)[None, :] == txt2img[:, None]
        assert ours[f"t2i_r{k}"] == pytest.approx(hit(t2i.flatten(), target.flatten(), indexes=idx.flatten()).item())
        assert ours[f"t2i_r{k}"] == pytest.approx(
            (t2i.topk(k, 1).indices == txt2img[:, None]).any(1).float().mean().item()
        )


def test_rerank_reorders_only_the_top_k():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    second = torch.tensor([[1.0, 5.0, 9.0, 100.0]])  # the re-ranker prefers later columns
    out = rerank(scores, 2, lambda q, d: second[q, d])
    order = out[0].argsort(descending=True).tolist()
    assert order == [1, 0, 2, 3]  # top-2 by ITC re-ordered by the second stage; the rest keep ITC order behind


# --------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    "answers, expected",
    [
        ("two", 1.0),
        ("three", 0.0),
        (["two"], 1.0),
        (["two"] * 3 + ["one"] * 7, 0.9),  # official VQAv2: (3 * 2/3 + 7 * 1) / 10
        (["two"] * 2 + ["one"] * 8, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
        (["two"] * 1 + ["one"] * 9, 0.3),  # (1 * 0 + 9 * 1/3) / 10
        # official quirk: 10 identical answers -> no normalisation, so "Two." is not "two"
        (["two"] * 10, 0.0),
        (["one"] * 10, 0.0),
    ],
)
def test_vqa_score_hand_computed(answers, expected):
    assert vqa_score("Two.", answers) == pytest.approx(expected)


# --------------------------------------------------------------------------- captioning


def test_caption_scores_are_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    refs = [
        ["a red circle left of a blue square", "there is a red circle"],
        ["two squares", "a small green square"],
        ["there are three objects", "a cyan cross above a red circle"],
    ]
    hyps = ["a red circle left of a green square", "a small green square", "there are two objects"]
    ours = caption_scores(refs, hyps)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert ours["captioning/bleu4"] == pytest.approx(bleu[3]) and ours["captioning/cider"] == pytest.approx(cider)
    assert ours["captioning/exact_match"] == pytest.approx(1 / 3)


def test_caption_scores_hand_computed():
    refs = [["a small red circle", "there is a circle"], ["two blue squares", "a blue square"]]
    perfect = caption_scores(refs, ["a small red circle", "two blue squares"])
    assert perfect["captioning/exact_match"] == 1.0 and perfect["captioning/bleu4"] > 0.99
    wrong = caption_scores(refs, ["zebra", "zebra"])
    assert (
        wrong["captioning/exact_match"] == 0.0 and wrong["captioning/bleu4"] < 1e-6 and wrong["captioning/cider"] == 0.0
    )
    assert tokenize("A red circle, left of a square.") == "a red circle left of a square"


# --------------------------------------------------------------------------- robustness


def test_area_under_curve():
    assert area_under_curve([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert area_under_curve([0, 0.25, 0.5], [0.8, 0.8, 0.8]) == pytest.approx(0.8)  # robust: the clean value
    assert area_under_curve([0.5, 0], [0.0, 1.0]) == pytest.approx(0.5)  # order of the points does not matter


def test_corruptions():
    g = lambda: torch.Generator().manual_seed(0)
    rng = lambda: np.random.default_rng(0)
    batch = {"pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1, "region_mask": torch.ones(2, 3, dtype=torch.bool)}
    assert torch.equal(patch_dropout(batch, g(), 0.0)["pixel_values"], batch["pixel_values"])
    dropped = patch_dropout(batch, g(), 1.0, patch_size=16)
    assert (dropped["pixel_values"] == 0).all() and not dropped["region_mask"].any()
    half = patch_dropout(batch, g(), 0.5, patch_size=16)["pixel_values"]
    cells = (half.view(2, 3, 2, 16, 2, 16) == 0).all(dim=(1, 3, 5))  # (2, 2, 2): whole cells are dropped
    assert (half == 0).sum() == cells.sum() * 3 * 16 * 16
    assert (blank_image(batch, g())["pixel_values"] == 0).all()
    noisy = corruption("image_noise", 0.5).images(batch, g())["pixel_values"]
    assert noisy.abs().max() <= 1 and not torch.equal(noisy, batch["pixel_values"])
    texts = ["a small red circle left of a blue square", "there are two objects"]
    assert text_dropout(texts, rng(), 0.0) == texts and text_dropout(texts, rng(), 1.0) == ["", ""]
    assert text_typos(texts, rng(), 0.0) == texts
    typos = text_typos(texts, rng(), 1.0)
    assert typos == text_typos(texts, rng(), 1.0)  # seeded: deterministic
    assert all(a != b for a, b in zip(typos[0].split(), texts[0].split()) if len(b) > 1)
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption("nope", 0.1)


def test_robustness_curves_and_missing_modalities():
    def evaluate(c):
        level = 0.0 if c is None else c.level
        return {"vqa/acc": 1.0 - level, "other": 3.0}

    out = robustness(
        evaluate,
        metrics=["vqa/acc", "absent/metric"],
        levels=[0.5, 1.0],
        corruptions=["image_noise", "text_typos"],
        missing=["blank_image"],
    )
    assert out["robustness/image_noise/vqa/acc/l0"] == 1.0 and out["robustness/image_noise/vqa/acc/l50"] == 0.5
    assert out["robustness/text_typos/vqa/acc/auc"] == pytest.approx(0.5)
    assert out["robustness/blank_image/vqa/acc"] == 0.0
    assert not any("absent" in k or "other" in k for k in out)


def test_holdout_gap():
    metrics = {"test/vqa/acc": 0.9, "test_holdout/vqa/acc": 0.6, "test_holdout/zeroshot/top1": 0.2}
    assert holdout_gap(metrics) == {"test/holdout_gap/vqa/acc": pytest.approx(0.3)}


def test_ties_rank_in_gallery_order():
    """Equal scores rank by column index, so Recall@K of tied documents (identical blank images) is
    a function of the scores alone, whatever kernel or thread count computed the ranking."""
    from mmbench.metrics.retrieval import hits_at_k, top_indices

    scores = torch.tensor([[0.5, 0.9, 0.9, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    assert top_indices(scores, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    # query 0's relevant document is the third of three tied best ones: out of the top 2, in the top 3
    hits = hits_at_k(scores[:1], torch.tensor([3]), torch.arange(5), ks=(2, 3))
    assert hits[2].tolist() == [False] and hits[3].tolist() == [True]
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            big = torch.zeros(300, 1000)  # every score tied
            assert torch.equal(top_indices(big, 10), torch.arange(10).expand(300, 10))
    finally:
        torch.set_num_threads(before)
