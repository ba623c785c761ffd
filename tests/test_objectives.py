"""Known-answer tests for each objective's loss, its gradients, and negative sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmbench.models.outputs import Features
from mmbench.objectives.context import StepContext
from mmbench.objectives.itc import ITC, multi_positive_contrastive_loss
from mmbench.objectives.itm import ITM, known_true, sample_negatives, true_pairs
from mmbench.objectives.mlm import MLM, mask_tokens
from mmbench.objectives.vqa import VQA
from tests.test_layers_and_model import D, inputs, tiny_model


def test_itc_known_answer_single_positive():
    # Orthonormal embeddings, temperature 1: logits are the identity matrix.
    emb = torch.eye(2)
    loss, acc = multi_positive_contrastive_loss(emb, emb, torch.tensor([0, 1]), 1.0)
    expected = -math.log(math.e / (math.e + 1))  # each row: softmax([1, 0])[0]
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert acc.item() == 1.0


def test_itc_known_answer_multi_positive():
    # Rows 0 and 1 are two captions of the same image: both columns are positives (target 1/2 each).
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 9])
    loss, _ = multi_positive_contrastive_loss(img, txt, ids, 1.0)
    logits = img @ txt.T
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    by_hand = lambda lg, tg: float(-(tg * lg.log_softmax(1)).sum(1).mean())
    expected = 0.5 * (by_hand(logits, target) + by_hand(logits.T, target))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    # a same-image caption is never a negative: a model that cannot tell the two captions of
    # image 7 apart (identical text embeddings) loses nothing for it
    txt_same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss_same, acc_same = multi_positive_contrastive_loss(img, txt_same, ids, 100.0**-1)
    assert loss_same.item() < 0.01 + math.log(2) and acc_same.item() == 1.0


def test_itc_claim_positives_known_answer():
    """claim_positives: a text the data says is true of an image is one of its positives (i2t and t2i)."""
    from mmbench.objectives.claims import claims_true

    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([0, 1, 2])
    facts = torch.tensor([[5, 7], [6, 0], [8, 0]])  # image 0 has facts 5 and 7
    claims = torch.tensor([5, 6, 7])  # text 2 (of image 2) claims 7: true of image 0 too
    extra = claims_true(facts, claims)
    assert extra.tolist() == [[True, False, True], [False, True, False], [False, False, False]]
    loss, acc = multi_positive_contrastive_loss(img, txt, ids, 1.0, extra_i2t=extra, extra_t2i=extra.T)
    logits = img @ txt.T
    t_i2t = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t_t2i = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    by_hand = lambda lg, tg: float(-(tg * lg.log_softmax(1)).sum(1).mean())
    expected = 0.5 * (by_hand(logits, t_i2t) + by_hand(logits.T, t_t2i))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    plain, _ = multi_positive_contrastive_loss(img, txt, ids, 1.0)
    assert not math.isclose(plain.item(), expected, rel_tol=1e-3)
    # through the objective: the batch's codes switch it on; unknown claims (0) are never positives
    itc = ITC(text_dim=2, image_dim=2, embed_dim=2, claim_positives=True)
    batch = {"image_id": ids, "text_claim": torch.tensor([0, 0, 0]), "image_facts": torch.zeros(3, 2, dtype=torch.long)}
    assert claims_true(batch["image_facts"], batch["text_claim"]).sum() == 0
    feats = lambda x: Features(x[:, None], torch.ones(3, 1, dtype=torch.bool), x)
    a = itc(None, batch, feats(txt), feats(img), StepContext()).loss
    b = ITC(text_dim=2, image_dim=2, embed_dim=2)
    b.load_state_dict(itc.state_dict())
    assert torch.equal(a, b(None, {"image_id": ids}, feats(txt), feats(img), StepContext()).loss)


def test_itc_objective_gradient_and_temperature_clamp():
    torch.manual_seed(0)
    itc = ITC(text_dim=D, image_dim=D, embed_dim=8, temperature_init=0.07)
    text = Features(torch.randn(4, 3, D), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, D, requires_grad=True))
    image = Features(torch.randn(4, 5, D), torch.ones(4, 5, dtype=torch.bool), torch.randn(4, D, requires_grad=True))
    ctx = StepContext()
    out = itc(None, {"image_id": torch.arange(4)}, text, image, ctx)
    out.loss.backward()
    assert text.pooled.grad.abs().sum() > 0 and image.pooled.grad.abs().sum() > 0
    assert itc.temperature.grad is not None and ctx.itc_sim_i2t.shape == (4, 4)
    with torch.no_grad():
        itc.temperature.fill_(1e-5)
    out = itc(None, {"image_id": torch.arange(4)}, text, image, StepContext())
    assert math.isclose(out.metrics["temperature"].item(), 0.01, rel_tol=1e-6)


def test_negative_sampling_never_returns_same_image():
    ids = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    g = torch.Generator().manual_seed(0)
    for scores in (None, torch.randn(8, 8, generator=g) * 10):
        for _ in range(50):
            idx, valid = sample_negatives(ids, scores, generator=g)
            assert valid.all()
            assert (ids[idx] != ids).all()


def test_negative_sampling_follows_scores():
    ids = torch.arange(3)
    scores = torch.tensor([[0.0, 50.0, -50.0], [0.0, 0.0, 50.0], [50.0, -50.0, 0.0]])
    idx, _ = sample_negatives(ids, scores)
    assert idx.tolist() == [1, 2, 0]


def test_negative_sampling_mixes_uniform_and_hard():
    """hardness a: P(j) = a * softmax(scores)_j + (1 - a) / #allowed; a=0 ignores the scores."""
    ids = torch.arange(3)
    scores = torch.tensor([[0.0, 50.0, -50.0], [-50.0, 0.0, 50.0], [50.0, -50.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for a, p_hard in ((0.0, 0.5), (0.5, 0.75), (1.0, 1.0)):
        hits = 0
        n = 4000
        for _ in range(n // 400):
            idx = torch.stack([sample_negatives(ids, scores, generator=g, hardness=a)[0] for _ in range(400)])
            hits += (idx == torch.tensor([1, 2, 0])).sum().item()
        assert abs(hits / (3 * n) - p_hard) < 0.02, (a, hits / (3 * n))


def test_true_pairs_and_negatives_exclude_identical_captions():
    """A caption word for word equal to one of image i's captions is true of image i: never its negative."""
    image_ids = torch.tensor([0, 0, 1, 2])
    input_ids = torch.tensor([[1, 5, 2, 0], [1, 6, 7, 2], [1, 5, 2, 0], [1, 8, 2, 0]])  # rows 0 and 2 say the same
    true = true_pairs(image_ids, input_ids)
    expected = torch.tensor(
        [
            [1, 1, 1, 0],  # image 0 (rows 0, 1): its captions, and row 2 (= row 0's words)
            [1, 1, 1, 0],
            [1, 0, 1, 0],  # image 1 (row 2): itself and row 0 (same words)
            [0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(true, expected)
    assert torch.equal(true_pairs(image_ids), image_ids[:, None] == image_ids[None, :])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx, valid = sample_negatives(image_ids, torch.randn(4, 4, generator=g) * 5, generator=g, true=true)
        assert valid.all() and not true[torch.arange(4), idx].any()


def test_negatives_exclude_texts_the_data_says_are_true():
    """With claims (Shapes), a text of another image that is true of image i is never its negative."""
    batch = {"image_id": torch.tensor([0, 1, 2, 3]), "input_ids": torch.tensor([[1, 5], [1, 6], [1, 7], [1, 8]])}
    assert torch.equal(known_true(batch), torch.eye(4, dtype=torch.bool))
    text_true = torch.eye(4, dtype=torch.bool)
    text_true[0, 1] = text_true[0, 2] = True  # texts 1 and 2 also describe image 0: only text 3 is false of it
    text_true[3, 0] = True
    batch["text_claim"] = torch.tensor([21, 22, 23, 24])
    batch["image_facts"] = torch.tensor([[21, 22, 23], [22, 0, 0], [23, 0, 0], [24, 21, 0]])
    true = known_true(batch)
    assert torch.equal(true, text_true)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        scores = torch.randn(4, 4, generator=g) * 5
        neg_text, valid = sample_negatives(batch["image_id"], scores, generator=g, true=true)
        assert valid.all() and neg_text[0] == 3 and not true[torch.arange(4), neg_text].any()
        neg_image, valid = sample_negatives(batch["image_id"], scores.T, generator=g, true=true.T)
        assert valid.all() and neg_image[0] != 3 and not true.T[torch.arange(4), neg_image].any()


def test_itm_hardness_schedule():
    assert ITM(dim=4).hardness(0.0) == 1.0  # no warm-up: the ALBEF recipe from the first step
    itm = ITM(dim=4, hard_negative_warmup=0.5)
    assert [itm.hardness(p) for p in (0.0, 0.25, 0.5, 0.9)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="hard_negative_warmup"):
        ITM(dim=4, hard_negative_warmup=1.5)


def test_negative_sampling_when_every_item_shares_the_image():
    ids = torch.tensor([5, 5, 5, 5])
    idx, valid = sample_negatives(ids, torch.randn(4, 4))
    assert not valid.any() and not torch.isnan(idx.float()).any()
    idx, valid = sample_negatives(torch.tensor([5, 5, 5, 6]), torch.randn(4, 4))
    assert valid.all() and idx[:3].eq(3).all() and ids[idx[3]] == 5


def test_itm_loss_and_gradients_reach_both_modalities():
    model = tiny_model().train()
    ids, mask, batch = inputs(B=4)
    batch.update(input_ids=ids, attention_mask=mask, image_id=torch.arange(4))
    itm = ITM(dim=D)
    out = itm(model, batch, model.encode_text(ids, mask), model.encode_image(batch), StepContext())
    assert 0 <= out.metrics["acc"] <= 1
    # chance-level head at init: loss near log(2)
    assert abs(out.loss.item() - math.log(2)) < 0.5
    out.loss.backward()
    assert model.text_encoder.word_embeddings.weight.grad.abs().sum() > 0
    assert model.vision_encoder.patch_embed.weight.grad.abs().sum() > 0


def test_itm_all_same_image_uses_positives_only():
    model = tiny_model()
    ids, mask, batch = inputs(B=3)
    batch.update(input_ids=ids, attention_mask=mask, image_id=torch.zeros(3, dtype=torch.long))
    out = ITM(dim=D)(model, batch, model.encode_text(ids, mask), model.encode_image(batch), StepContext())
    assert torch.isfinite(out.loss)


def _itm_with_text_negatives(has: list[bool]):
    """ITM(text_negatives=True) on a tiny model whose batch's negatives are the captions reversed."""
    model = tiny_model()
    B = len(has)
    ids, mask, batch = inputs(B=B)
    neg_ids = ids.flip(1)
    batch.update(input_ids=ids, attention_mask=mask, image_id=torch.arange(B))
    batch.update(negative_ids=neg_ids, negative_mask=mask, has_negative=torch.tensor(has))
    return model, batch, ITM(dim=D, text_negatives=True)


def test_itm_text_negatives_known_answer():
    # the loss is the cross-entropy over the batch's 3B rows plus one "no match" row per caption that
    # has a hard negative: (image k, negative k)
    model, batch, itm = _itm_with_text_negatives([True, False, True])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    image = model.encode_image(batch)
    torch.manual_seed(3)
    out = itm(model, batch, text, image, StepContext())
    plain = ITM(dim=D)
    plain.head = itm.head
    torch.manual_seed(3)  # the same in-batch negatives
    base = plain(model, batch, text, image, StepContext())
    has = torch.tensor([0, 2])
    neg = model.encode_text(batch["negative_ids"][has], batch["negative_mask"][has])
    neg_logits = itm.head(model.fuse(neg, image.index(has)).pooled)  # (2, 2)
    extra = F.cross_entropy(neg_logits, torch.zeros(2, dtype=torch.long), reduction="sum")
    n_base = 3 * 3  # every in-batch negative is valid: three distinct images
    expected = (base.loss * n_base + extra) / (n_base + 2)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert "swap_acc" not in base.metrics


def test_itm_swap_acc_compares_each_caption_with_its_own_negative():
    torch.manual_seed(0)
    model, batch, itm = _itm_with_text_negatives([True, True, False, True, True, True])
    text, image = model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch)
    out = itm(model, batch, text, image, StepContext())
    has = batch["has_negative"].nonzero().squeeze(1)
    neg = model.encode_text(batch["negative_ids"][has], batch["negative_mask"][has])

    def odds(t):  # match log-odds of (t, image of each row with a negative); no dropout in the tiny model
        logits = itm.head(model.fuse(t, image.index(has)).pooled)
        return logits[:, 1] - logits[:, 0]

    wins = odds(text.index(has)) > odds(neg)  # (5,)
    assert 0 < wins.sum() < len(wins)  # a mixed case, so that a swapped comparison would differ
    assert torch.isclose(out.metrics["swap_acc"], wins.float().mean())


def test_itm_text_negatives_without_any_negative_equal_plain_itm():
    model, batch, itm = _itm_with_text_negatives([False, False, False])
    text, image = model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch)
    plain = ITM(dim=D)
    plain.head = itm.head
    torch.manual_seed(5)
    a = itm(model, batch, text, image, StepContext()).loss
    torch.manual_seed(5)
    b = plain(model, batch, text, image, StepContext()).loss
    assert torch.allclose(a, b, atol=1e-6)
    assert "swap_acc" not in itm(model, batch, text, image, StepContext()).metrics  # no negative, no rate


def test_itm_reads_negative_fields_only_when_asked():
    assert ITM.fields_read() == ()
    assert set(ITM.fields_read(text_negatives=True)) == {"negative_ids", "negative_mask", "has_negative"}


def test_itc_text_negatives_known_answer():
    # one more image-to-text column per image, its own caption's negative; text-to-image unchanged
    model, batch, _ = _itm_with_text_negatives([True, False, True])
    text, image = model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch)
    itc = ITC(text_dim=D, image_dim=D, embed_dim=8, text_negatives=True)
    out = itc(model, batch, text, image, StepContext())
    t, v = itc.embed(text.pooled, image.pooled)  # (B, E)
    n, _ = itc.embed(model.encode_text(batch["negative_ids"], batch["negative_mask"]).pooled, image.pooled)
    temp = itc.temperature.clamp(*itc.bounds)
    i2t = torch.cat([v @ t.T, (v * n).sum(-1, keepdim=True)], 1) / temp  # (B, B + 1)
    i2t[1, -1] = -float("inf")  # row 1 has no negative
    expected = 0.5 * (F.cross_entropy(i2t, torch.arange(3)) + F.cross_entropy(t @ v.T / temp, torch.arange(3)))
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert torch.isfinite(out.loss)
    plain = ITC(text_dim=D, image_dim=D, embed_dim=8)
    plain.load_state_dict(itc.state_dict())
    assert out.loss > plain(model, batch, text, image, StepContext()).loss  # the extra column only adds mass
    with pytest.raises(ValueError, match="queue"):
        ITC(text_dim=D, image_dim=D, text_negatives=True, queue_size=8, model=model)


def test_itc_and_itm_encode_the_negatives_once_per_step():
    model, batch, itm = _itm_with_text_negatives([True, True, False])
    text, image = model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch)
    calls = []
    model.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    context = StepContext()
    ITC(text_dim=D, image_dim=D, text_negatives=True)(model, batch, text, image, context)
    itm(model, batch, text, image, context)
    assert calls == [2]  # one pass, over the two captions that have a negative


def test_mask_tokens_recipe():
    g = torch.Generator().manual_seed(0)
    B, T = 64, 64
    ids = torch.randint(7, 1000, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attn = torch.ones(B, T, dtype=torch.long)
    attn[:, -8:] = 0
    ids[:, -8:] = 0
    special = torch.arange(7)
    masked, selected = mask_tokens(ids, attn, special, mask_id=4, vocab_size=1000, generator=g)
    maskable = attn.bool() & (ids >= 7)
    assert not selected[~maskable].any()  # never padding or special tokens
    assert (masked[~selected] == ids[~selected]).all()
    rate = selected.sum() / maskable.sum()
    assert 0.13 < rate < 0.17
    sel = selected.sum().float()
    frac_mask = ((masked == 4) & selected).sum() / sel
    frac_same = ((masked == ids) & selected).sum() / sel
    assert 0.76 < frac_mask < 0.84 and 0.07 < frac_same < 0.14


def test_mlm_head_is_tied_and_loss_matches_cross_entropy():
    model = tiny_model()
    ids, mask, batch = inputs(B=4, T=8)
    batch.update(input_ids=ids, attention_mask=mask)
    mlm = MLM(dim=D, vocab_size=50, mask_id=4, special_ids=list(range(7)), mask_prob=0.5)
    torch.manual_seed(3)
    out = mlm(model, batch, None, model.encode_image(batch), StepContext())
    assert math.log(50) * 0.5 < out.loss.item() < math.log(50) * 2  # near uniform at init
    out.loss.backward()
    assert model.text_encoder.word_embeddings.weight.grad is not None  # tied decoder
    assert not any(p is model.text_encoder.word_embeddings.weight for p in mlm.parameters())


def test_vqa_known_answer():
    class Stub(torch.nn.Module):
        """Fused pooled vector fixed; only the VQA head is under test."""

    model = tiny_model()
    vqa = VQA(dim=D, num_answers=3, question_field=None)
    torch.nn.init.zeros_(vqa.head[-1].weight)
    with torch.no_grad():
        vqa.head[-1].bias.copy_(torch.tensor([2.0, 0.0, -1.0]))
    ids, mask, batch = inputs(B=2)
    batch["answer_scores"] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.3, 1.0]])
    out = vqa(model, batch, model.encode_text(ids, mask), model.encode_image(batch), StepContext())
    logits = torch.tensor([[2.0, 0.0, -1.0]] * 2)
    expected = F.binary_cross_entropy_with_logits(logits, batch["answer_scores"], reduction="sum") / 2
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)
    assert math.isclose(out.metrics["acc"].item(), 0.5)  # argmax = answer 0: score 1 then 0


# ---------------------------------------------------------------- step context and run order


def test_run_order_puts_providers_first_whatever_the_list_order():
    from mmbench.objectives.context import run_order

    declared = {"vqa": ((), ()), "itm": ((), ("itc_sim_i2t",)), "mlm": ((), ()), "itc": (("itc_sim_i2t",), ())}
    expected = ["itc", "itm", "mlm", "vqa"]
    for names in (["itm", "itc", "mlm", "vqa"], ["vqa", "mlm", "itm", "itc"], ["itc", "itm", "mlm", "vqa"]):
        assert run_order({n: declared[n] for n in names}) == expected
    assert run_order({"itm": declared["itm"]}) == ["itm"]  # nobody provides it: ITM samples uniformly
    with pytest.raises(ValueError, match="unknown step-context"):
        run_order({"x": ((), ("nope",))})
    with pytest.raises(ValueError, match="cycle"):
        run_order({"a": (("itc_sim_i2t",), ("progress",)), "b": (("progress",), ("itc_sim_i2t",))})


def test_itm_gets_itc_hard_negatives_whatever_the_list_order(cache_dir, tmp_path, monkeypatch):
    """`objective=[itm,itc]` used to run ITM first, so it never saw ITC's similarities and sampled
    uniform negatives; now both orders mine the same hard negatives and give the same metrics."""
    import mmbench.objectives.itm as itm_module
    from mmbench.pipeline import run
    from tests.conftest import TINY, compose_cfg

    seen = []
    sample = itm_module.sample_negatives

    def spy(ids, scores, **kwargs):
        seen.append(scores is not None)
        return sample(ids, scores, **kwargs)

    monkeypatch.setattr(itm_module, "sample_negatives", spy)
    a = run(compose_cfg([*TINY, "objective=[itc,itm]"], tmp_path / "a"))["metrics"]
    assert seen and all(seen)
    seen.clear()
    b = run(compose_cfg([*TINY, "objective=[itm,itc]"], tmp_path / "b"))["metrics"]
    assert seen and all(seen)
    assert a == b
