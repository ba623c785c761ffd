"""Model-level behaviour: output shapes, padding invariance, no causal leakage, SDPA."""

from __future__ import annotations

import pytest
import torch

from mmbench.models.fusion.merged import MergedFusion
from mmbench.models.layers import Attention, Residual, attention_mask, causal_mask, masked_mean
from mmbench.models.model import MultimodalModel
from mmbench.models.text import TextTransformer
from mmbench.models.vision.patch import PatchEncoder

D, H = 32, 4


def tiny_model(text_depth=1, fusion_depth=2, seed=0) -> MultimodalModel:
    torch.manual_seed(seed)
    model = MultimodalModel(
        TextTransformer(vocab_size=50, dim=D, depth=text_depth, heads=H, max_len=16, pooling=masked_mean),
        PatchEncoder(dim=D, image_size=16, patch_size=8, depth=0, heads=H),
        MergedFusion(dim=D, depth=fusion_depth, heads=H),
        dim=D,
    )
    return model.eval()


def inputs(B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    pixels = torch.randn(B, 3, 16, 16, generator=g)
    return ids, mask, {"pixel_values": pixels}


def test_shapes():
    model = tiny_model()
    ids, mask, batch = inputs()
    text, image = model.encode_text(ids, mask), model.encode_image(batch)
    assert text.tokens.shape == (3, 6, D) and text.pooled.shape == (3, D)
    assert image.tokens.shape == (3, 5, D) and image.mask.all()  # 4 patches + [CLS]
    joint = model.fuse(text, image)
    assert joint.text_tokens.shape == (3, 6, D)
    assert joint.image_tokens.shape == (3, 5, D)
    assert joint.pooled.shape == (3, D)


def test_padding_never_changes_outputs():
    model = tiny_model()
    ids, mask, batch = inputs(T=6)
    pad = torch.zeros(3, 4, dtype=torch.long)
    ids_p, mask_p = torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)
    with torch.no_grad():
        a = model.fuse(model.encode_text(ids, mask), model.encode_image(batch))
        b = model.fuse(model.encode_text(ids_p, mask_p), model.encode_image(batch))
        ta, tb = model.encode_text(ids, mask), model.encode_text(ids_p, mask_p)
    torch.testing.assert_close(ta.pooled, tb.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text_tokens, b.text_tokens[:, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.image_tokens, b.image_tokens, atol=1e-5, rtol=1e-5)


def test_padding_is_masked_not_ignored_by_accident():
    """Sanity check of the test above: changing a *real* token does change the output."""
    model = tiny_model()
    ids, mask, batch = inputs()
    ids2 = ids.clone()
    ids2[:, 2] = (ids2[:, 2] + 1 - 7) % 43 + 7
    with torch.no_grad():
        a = model.fuse(model.encode_text(ids, mask), model.encode_image(batch)).pooled
        b = model.fuse(model.encode_text(ids2, mask), model.encode_image(batch)).pooled
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("t", [0, 2, 4])
def test_merged_causal_text_has_no_future_leakage(t):
    model = tiny_model()
    ids, mask, batch = inputs(T=6)
    ids2 = ids.clone()
    ids2[:, t + 1] = (ids2[:, t + 1] + 5 - 7) % 43 + 7
    with torch.no_grad():
        img = model.encode_image(batch)
        a = model.fuse(model.encode_text(ids, mask, causal=True), img, causal_text=True)
        b = model.fuse(model.encode_text(ids2, mask, causal=True), img, causal_text=True)
    torch.testing.assert_close(a.text_tokens[:, : t + 1], b.text_tokens[:, : t + 1])
    torch.testing.assert_close(a.image_tokens, b.image_tokens)
    assert not torch.allclose(a.text_tokens[:, t + 1 :], b.text_tokens[:, t + 1 :])


def test_causal_mask_known_answers():
    # square: the lower triangle
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # 3 queries after 2 cached keys (positions 2, 3, 4 of 5): query i sees keys 0..2+i
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3, 5), want)
    # more queries than keys (the Q-Former's [queries; text] rows over the text keys): the first 2 see none
    want = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(4, 2), want)


@pytest.mark.parametrize(("T", "S"), [(1, 1), (1, 6), (4, 4), (3, 7), (6, 2)])
def test_causal_mask_never_shows_a_later_key(T, S):
    m = causal_mask(T, S)
    pos = torch.arange(T)[:, None] + S - T  # (T, 1) each query's position among the keys
    keys = torch.arange(S)[None, :]  # (1, S)
    assert torch.equal(m, keys <= pos)  # every earlier-or-same key, and no later one


def test_attention_mask_combines_padding_and_causal():
    key_mask = torch.tensor([[True, True, False, True, True], [True, True, True, False, False]])
    assert torch.equal(attention_mask(key_mask), key_mask[:, None, None, :])  # (B, 1, 1, S)
    m = attention_mask(key_mask, causal=True, queries=3)  # (B, 1, 3, 5): the last 3 positions as queries
    want0 = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    want1 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    assert m.shape == (2, 1, 3, 5)
    assert torch.equal(m[0, 0], want0) and torch.equal(m[1, 0], want1)
    assert torch.equal(attention_mask(key_mask, causal=True)[0, 0, 2:], want0)  # all 5 positions as queries


class _Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize(("prenorm", "want"), [(True, [-1.0, 5.0]), (False, [-1.0, 1.0])])
def test_residual_sublayer_known_answer(prenorm, want):
    # x = [1, 3]: LayerNorm(x) = [-1, 1]; pre-norm x + 2 LN(x) = [-1, 5]; post-norm LN(x + 2x) = LN([3, 9]) = [-1, 1]
    res = Residual(_Double(), 2, prenorm=prenorm)
    torch.testing.assert_close(res(torch.tensor([[1.0, 3.0]])), torch.tensor([want]), atol=1e-4, rtol=0)
    assert [n for n, _ in res.named_parameters()] == ["norm.weight", "norm.bias"]  # checkpoint keys: f.*, norm.*


def test_gradients_reach_both_modalities():
    model = tiny_model().train()
    ids, mask, batch = inputs()
    model.fuse(model.encode_text(ids, mask), model.encode_image(batch)).pooled.sum().backward()
    assert model.text_encoder.word_embeddings.weight.grad.abs().sum() > 0
    assert model.vision_encoder.patch_embed.weight.grad.abs().sum() > 0


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attn = Attention(D, H).eval()
    x = torch.randn(2, 5, D)
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = attn(x, mask=key_mask[:, None, None, :])
    q = attn.q(x).view(2, 5, H, D // H).transpose(1, 2)
    k = attn.k(x).view(2, 5, H, D // H).transpose(1, 2)
    v = attn.v(x).view(2, 5, H, D // H).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / (D // H) ** 0.5
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    ref = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, D))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="not divisible"):
        PatchEncoder(dim=D, image_size=20, patch_size=8)


def test_compiled_module_matches_eager_and_keeps_its_state_dict(cache_dir, tmp_path):
    """model.compile=true: the same losses and gradients as eager (fp32, within 1e-4) and the same
    state_dict keys, so checkpoints of compiled and eager runs load into each other."""
    from mmbench.builder import build_datamodule, build_module
    from tests.conftest import TINY, compose_cfg

    cfg = compose_cfg(["objective=[itc,vqa]", *TINY], tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    eager = build_module(cfg, dm.info)
    cfg.model.compile = True
    torch.manual_seed(0)
    compiled = build_module(cfg, dm.info)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())
    losses = []
    for module in (eager, compiled):
        loss = module.shared_step(batch, "train")
        loss.backward()
        losses.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    assert torch.allclose(losses[0][0], losses[1][0], atol=1e-4)
    assert losses[0][1].keys() == losses[1][1].keys()
    for name, grad in losses[0][1].items():
        assert torch.allclose(grad, losses[1][1][name], atol=1e-4), name
