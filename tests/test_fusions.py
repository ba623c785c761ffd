"""Token-level fusions (none, coattention, cross_encoder, text_cross_attention, gated_cross_attention):
shapes, gradients, padding invariance, causal leakage, Flamingo's closed gates, LXMERT's shared
cross-attention, and that each config in conf/fusion/ instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmbench.models.fusion.coattention import CoAttentionFusion
from mmbench.models.fusion.cross_encoder import CrossEncoderFusion
from mmbench.models.fusion.gated_cross_attention import GatedCrossAttentionFusion
from mmbench.models.fusion.none import NoFusion
from mmbench.models.fusion.text_cross_attention import TextCrossAttentionFusion
from mmbench.models.layers import Block, Pooler
from mmbench.models.outputs import Features

B, T, V, D, H, DEPTH = 3, 6, 5, 32, 4, 2
CONF = Path(__file__).resolve().parent.parent / "conf" / "fusion"

TOKEN_FUSIONS = [CoAttentionFusion, CrossEncoderFusion, TextCrossAttentionFusion, GatedCrossAttentionFusion]
CAUSAL_FUSIONS = [cls for cls in TOKEN_FUSIONS if cls.capabilities.causal_text]
TWO_STREAM = [CoAttentionFusion, CrossEncoderFusion]  # image tokens are updated by the text


def make(cls, prenorm: bool = False, open_gates: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    fusion = cls(dim=D, depth=DEPTH, heads=H, mlp_ratio=2.0, prenorm=prenorm)
    if open_gates and cls is GatedCrossAttentionFusion:  # closed gates would hide the image (tested apart)
        set_gates(fusion, 0.5)
    return fusion.eval()


def set_gates(fusion: GatedCrossAttentionFusion, value: float):
    with torch.no_grad():
        for blk in fusion.xattn_blocks:
            blk.alpha_xattn.fill_(value)
            blk.alpha_ffn.fill_(value)


def features(n: int, pad_last: int = 0, seed: int = 1, grad: bool = False) -> Features:
    """Random features with `n` tokens; sample 1 has its last `pad_last` tokens padded (token 0 always real)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, n, D, generator=g)
    mask = torch.ones(B, n, dtype=torch.bool)
    if pad_last:
        mask[1, n - pad_last :] = False
    return Features(tokens.requires_grad_(grad), mask, torch.randn(B, D, generator=g))


def append_padding(f: Features, k: int, seed: int = 7) -> Features:
    """Append `k` padded tokens (mask False) with random values."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.cat([f.tokens, 10 * torch.randn(B, k, D, generator=g)], 1)
    mask = torch.cat([f.mask, torch.zeros(B, k, dtype=torch.bool)], 1)
    return Features(tokens, mask, f.pooled)


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_no_fusion_returns_nothing():
    fusion = NoFusion()
    out = fusion(features(T), features(V))
    assert out.text_tokens is None and out.image_tokens is None and out.pooled is None
    caps = NoFusion.capabilities
    assert not (caps.joint_pooled or caps.text_tokens or caps.causal_text)
    assert param_count(fusion) == 0


@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_declared_capabilities_match_what_the_fusion_does(cls):
    """`causal_text` (which validation reads to allow the LM objective): run with causal_text=True, no text
    output depends on a later text token; a fusion without it refuses causal_text=True (its image stream
    would carry later tokens back). Bidirectional by default either way. `text_tokens` / `joint_pooled`:
    it returns them, the pooled vector depending on the image (the text's side:
    test_gradients_reach_both_modalities)."""
    fusion, image = make(cls), features(V, seed=2)
    text = features(T)
    changed = Features(text.tokens.clone(), text.mask, text.pooled)
    changed.tokens[:, -1] += 1.0  # the last text token only

    def sees_the_future(**causal) -> bool:
        before, after = fusion(text, image, **causal), fusion(changed, image, **causal)
        return not torch.allclose(before.text_tokens[:, :-1], after.text_tokens[:, :-1], atol=1e-6)

    assert sees_the_future()
    if cls.capabilities.causal_text:
        assert not sees_the_future(causal_text=True)
    else:
        with pytest.raises(ValueError, match="cannot run with causal_text=True"):
            fusion(text, image, causal_text=True)
    before, other_image = fusion(text, image), fusion(text, features(V, seed=3))
    assert cls.capabilities.text_tokens and before.text_tokens is not None
    assert cls.capabilities.joint_pooled and not torch.allclose(before.pooled, other_image.pooled)


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_shapes(cls, prenorm):
    out = make(cls, prenorm=prenorm)(features(T, pad_last=2), features(V, pad_last=1))
    assert out.text_tokens.shape == (B, T, D)
    assert out.image_tokens.shape == (B, V, D)
    assert out.pooled.shape == (B, D)
    assert torch.isfinite(out.text_tokens).all() and torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_gradients_reach_both_modalities(cls):
    fusion = make(cls).train()
    text, image = features(T, grad=True), features(V, seed=2, grad=True)
    out = fusion(text, image)
    w = torch.randn(B, T, D)  # random weights: post-norm tokens sum to ~0 over D
    ((out.text_tokens * w).sum() + (out.pooled * torch.randn(B, D)).sum()).backward(retain_graph=True)
    assert text.tokens.grad.abs().sum() > 0
    assert image.tokens.grad.abs().sum() > 0  # the text outputs depend on the image
    (out.image_tokens * torch.randn(B, V, D)).sum().backward()
    for p in fusion.parameters():  # every parameter is used by some output
        assert p.grad is not None


@pytest.mark.parametrize("cls", TWO_STREAM)
def test_image_stream_depends_on_text(cls):
    fusion = make(cls)
    text, image = features(T, grad=True), features(V, seed=2)
    (fusion(text, image).image_tokens * torch.randn(B, V, D)).sum().backward()
    assert text.tokens.grad.abs().sum() > 0


def _assert_same(a, b, text_mask, image_mask):
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    Tn, Vn = text_mask.shape[1], image_mask.shape[1]
    torch.testing.assert_close(a.text_tokens[text_mask], b.text_tokens[:, :Tn][text_mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.image_tokens[image_mask], b.image_tokens[:, :Vn][image_mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_padding_never_changes_outputs(cls, causal):
    if causal and not cls.capabilities.causal_text:
        pytest.skip("fusion is not causal-safe")
    fusion = make(cls)
    text, image = features(T, pad_last=2), features(V, pad_last=2, seed=2)
    with torch.no_grad():
        ref = fusion(text, image, causal_text=causal)
        more_text = fusion(append_padding(text, 3), image, causal_text=causal)
        more_image = fusion(text, append_padding(image, 4), causal_text=causal)
    _assert_same(ref, more_text, text.mask, image.mask)
    _assert_same(ref, more_image, text.mask, image.mask)


@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_real_image_token_changes_text(cls):
    """Sanity check of the padding test: a *real* image token does change the outputs."""
    fusion = make(cls)
    text, image = features(T, pad_last=2), features(V, pad_last=2, seed=2)
    image2 = Features(image.tokens.clone(), image.mask, image.pooled)
    image2.tokens[:, 1] += torch.randn(B, D)  # position 1 is real in every sample
    with torch.no_grad():
        a, b = fusion(text, image), fusion(text, image2)
    for i in range(B):
        assert not torch.allclose(a.text_tokens[i], b.text_tokens[i], atol=1e-4)
        assert not torch.allclose(a.pooled[i], b.pooled[i], atol=1e-4)


@pytest.mark.parametrize("t", [0, 2, 4])
@pytest.mark.parametrize("cls", CAUSAL_FUSIONS)
def test_causal_text_has_no_future_leakage(cls, t):
    fusion = make(cls)
    text, image = features(T), features(V, pad_last=2, seed=2)
    text2 = Features(text.tokens.clone(), text.mask, text.pooled)
    text2.tokens[:, t + 1] += torch.randn(B, D)
    with torch.no_grad():
        a, b = fusion(text, image, causal_text=True), fusion(text2, image, causal_text=True)
    torch.testing.assert_close(a.text_tokens[:, : t + 1], b.text_tokens[:, : t + 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.image_tokens, b.image_tokens)
    for i in range(B):
        assert not torch.allclose(a.text_tokens[i, t + 1 :], b.text_tokens[i, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("cls", TOKEN_FUSIONS)
def test_non_causal_fusions_refuse_causal_text(cls):
    if cls.capabilities.causal_text:
        pytest.skip("causal-safe fusion")
    with pytest.raises(ValueError, match="causal_text"):
        make(cls)(features(T), features(V), causal_text=True)


@pytest.mark.parametrize("prenorm", [False, True])
def test_gated_cross_attention_closed_gates_ignore_image(prenorm):
    fusion = make(GatedCrossAttentionFusion, prenorm=prenorm, open_gates=False)
    text, image = features(T, pad_last=2), features(V, seed=2)
    other = features(V, pad_last=3, seed=3)
    with torch.no_grad():
        a, b = fusion(text, image), fusion(text, other)
        # closed gates: exactly the language model alone
        x, mask = text.tokens, text.mask[:, None, None, :]
        for lm in fusion.lm_blocks:
            x = lm(x, mask=mask)
        lm_only = fusion.norm(x)
    torch.testing.assert_close(a.text_tokens, b.text_tokens, atol=0, rtol=0)
    torch.testing.assert_close(a.pooled, b.pooled, atol=0, rtol=0)
    torch.testing.assert_close(a.text_tokens, lm_only, atol=1e-6, rtol=1e-6)
    set_gates(fusion, 0.3)
    with torch.no_grad():
        c, d = fusion(text, image), fusion(text, other)
    assert not torch.allclose(c.text_tokens, d.text_tokens, atol=1e-4)


def test_gated_cross_attention_gates_start_at_zero_and_learn():
    fusion = GatedCrossAttentionFusion(dim=D, depth=DEPTH, heads=H)
    gates = [p for n, p in fusion.named_parameters() if "alpha" in n]
    assert len(gates) == 2 * DEPTH and all(g.shape == () and g.item() == 0 for g in gates)
    out = fusion(features(T), features(V, seed=2))
    (out.text_tokens * torch.randn(B, T, D)).sum().backward()
    assert all(g.grad.abs() > 0 for g in gates)  # tanh'(0) = 1: closed gates still receive gradient


def test_cross_encoder_shares_cross_attention_between_directions():
    fusion = make(CrossEncoderFusion)
    # parameter count: per layer ONE cross-attention sublayer + one self-attn/FFN block per stream
    cross = Block(D, H, self_attention=False, cross_attention=True, feed_forward=False)
    block = Block(D, H, mlp_ratio=2.0)
    assert param_count(fusion) == DEPTH * (param_count(cross) + 2 * param_count(block)) + param_count(Pooler(D))
    # identity: the same module is called for language->vision and vision->language, on pre-layer states
    calls = []
    layer = fusion.layers[0]
    handle = layer.cross_attn.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((args[0], kwargs["context"])), with_kwargs=True
    )
    text, image = features(T), features(V, seed=2)
    with torch.no_grad():
        fusion(text, image)
    handle.remove()
    assert len(calls) == 2
    assert calls[0][0] is text.tokens and calls[0][1] is image.tokens  # text queries image
    assert calls[1][0] is image.tokens and calls[1][1] is text.tokens  # image queries (pre-layer) text


def test_coattention_directions_read_pre_layer_states():
    fusion = make(CoAttentionFusion)
    seen = {}
    layer = fusion.layers[0]
    hooks = [
        getattr(layer, name).register_forward_hook(
            lambda m, args, kwargs, out, name=name: seen.__setitem__(name, kwargs["context"]), with_kwargs=True
        )
        for name in ("text_coattn", "image_coattn")
    ]
    text, image = features(T), features(V, seed=2)
    with torch.no_grad():
        fusion(text, image)
    for h in hooks:
        h.remove()
    assert seen["text_coattn"] is image.tokens and seen["image_coattn"] is text.tokens
    # separate co-attention weights per stream (ViLBERT), unlike LXMERT
    assert layer.text_coattn is not layer.image_coattn


def test_text_cross_attention_leaves_image_unchanged_and_pools_first_token():
    fusion = make(TextCrossAttentionFusion)
    text, image = features(T), features(V, seed=2)
    with torch.no_grad():
        out = fusion(text, image)
    assert out.image_tokens is image.tokens
    torch.testing.assert_close(out.pooled, out.text_tokens[:, 0])


@pytest.mark.parametrize(
    "name, cls",
    [
        ("none", NoFusion),
        ("coattention", CoAttentionFusion),
        ("cross_encoder", CrossEncoderFusion),
        ("text_cross_attention", TextCrossAttentionFusion),
        ("gated_cross_attention", GatedCrossAttentionFusion),
    ],
)
def test_config_instantiates(name, cls):
    model = {"dim": D, "fusion_depth": 1, "heads": H, "mlp_ratio": 4.0, "prenorm": False, "dropout": 0.1}
    cfg = OmegaConf.create({"model": model, "fusion": OmegaConf.load(CONF / f"{name}.yaml")})
    fusion = instantiate(cfg.fusion)
    assert type(fusion) is cls
