"""Flamingo's Perceiver Resampler (mmbench/models/fusion/resampler.py) and its place in model=flamingo."""

from __future__ import annotations

import pytest
import torch

from mmbench.models.fusion.gated_cross_attention import GatedCrossAttentionFusion
from mmbench.models.fusion.resampler import PerceiverResampler
from mmbench.models.outputs import Features

D, HEADS = 32, 4


def _image(B: int, V: int, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, V, D, generator=g)
    return Features(tokens, torch.ones(B, V, dtype=torch.bool), tokens.mean(1))


@pytest.fixture
def resampler():
    torch.manual_seed(0)
    return PerceiverResampler(D, num_latents=5, depth=2, heads=HEADS).eval()


def test_a_fixed_number_of_tokens_whatever_the_image_gives(resampler):
    for V in (1, 9, 37):
        out = resampler(_image(3, V))
        assert out.tokens.shape == (3, 5, D) and out.mask.shape == (3, 5) and bool(out.mask.all())
        assert torch.allclose(out.pooled, out.tokens.mean(1))


def test_the_order_of_the_image_tokens_does_not_matter(resampler):
    image = _image(2, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    shuffled = Features(image.tokens[:, perm], image.mask[:, perm], image.pooled)
    torch.testing.assert_close(resampler(image).tokens, resampler(shuffled).tokens, atol=1e-5, rtol=1e-5)


def test_padding_never_changes_the_latents(resampler):
    """Padded image tokens (mask False) holding NaN give the latents of the unpadded image."""
    image = _image(2, 7)
    pad = torch.full((2, 4, D), float("nan"))
    padded = Features(
        torch.cat([image.tokens, pad], 1),
        torch.cat([image.mask, torch.zeros(2, 4, dtype=torch.bool)], 1),
        image.pooled,
    )
    out = resampler(padded).tokens
    # 1e-5: a longer key sequence takes other SDPA blockings (AVX-512 kernels differ in the last bits);
    # NaN leaking from a padded key would make the row NaN, not off by 1e-6
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, resampler(image).tokens, atol=1e-5, rtol=1e-5)


def test_the_latents_read_the_image(resampler):
    assert not torch.allclose(resampler(_image(2, 9, seed=0)).tokens, resampler(_image(2, 9, seed=1)).tokens)


def test_flamingo_fusion_attends_to_the_latents_and_starts_as_the_text_model():
    torch.manual_seed(0)
    fusion = GatedCrossAttentionFusion(
        D, depth=2, heads=HEADS, resampler=PerceiverResampler(D, num_latents=5, depth=1, heads=HEADS)
    ).eval()
    text = _image(2, 6, seed=3)  # any (B, T, D) tokens with a mask
    a, b = fusion(text, _image(2, 9, seed=0)), fusion(text, _image(2, 20, seed=1))
    assert a.image_tokens.shape == (2, 5, D) and b.image_tokens.shape == (2, 5, D)
    assert torch.equal(a.text_tokens, b.text_tokens)  # gates closed: the image cannot reach the text yet
    with torch.no_grad():
        for block in fusion.xattn_blocks:
            block.alpha_xattn.fill_(1.0)
    assert not torch.allclose(
        fusion(text, _image(2, 9, seed=0)).text_tokens, fusion(text, _image(2, 9, seed=1)).text_tokens
    )


def test_model_flamingo_uses_the_resampler_and_can_do_without():
    from mmbench.builder import build_model
    from mmbench.config import compose_train
    from mmbench.data.datamodule import DataInfo

    def fusion(*overrides):
        cfg = compose_train(["model=flamingo", *overrides])
        return build_model(
            cfg, DataInfo.of_vocab(1000, max_text_len=cfg.data.max_text_len, image_size=cfg.data.image_size)
        ).fusion

    assert isinstance(fusion().resampler, PerceiverResampler) and fusion().resampler.latents.shape == (8, 128)
    assert fusion("fusion.resampler=null").resampler is None
