"""BLIP-2's Q-Former: who sees whom (no future-token leakage in generation mode, text reaches the queries
in matching mode), padding never changes outputs, the stage-2 connector is the stage-1 queries of the
generation mode, and both presets train through the CLI pipeline."""

from __future__ import annotations

import pytest
import torch

from mmbench.config import ConfigError, validate
from mmbench.models.fusion.qformer import QFormer, QFormerFusion, QueryConnector
from mmbench.models.outputs import Features
from mmbench.pipeline import run
from tests.conftest import compose_cfg

D, DI, N = 16, 12, 4


def _qformer(depth: int = 3, freq: int = 2) -> QFormer:
    torch.manual_seed(0)
    return QFormer(D, depth, heads=2, num_queries=N, cross_attention_freq=freq, image_dim=DI).eval()


def _inputs(B: int = 2, T: int = 6, V: int = 5) -> tuple[Features, Features]:
    g = torch.Generator().manual_seed(1)
    text = Features(torch.randn(B, T, D, generator=g), torch.ones(B, T, dtype=torch.bool), torch.zeros(B, D))
    image = Features(torch.randn(B, V, DI, generator=g), torch.ones(B, V, dtype=torch.bool), torch.zeros(B, DI))
    return text, image


def _with_token(text: Features, j: int) -> Features:
    tokens = text.tokens.clone()
    tokens[:, j] += 3.0
    return Features(tokens, text.mask, text.pooled)


def test_cross_attention_every_fth_layer():
    q = _qformer(depth=5, freq=2)
    assert [layer.cross_attn is not None for layer in q.layers] == [True, False, True, False, True]


def test_generation_mode_has_no_future_token_leakage_and_matching_mode_reads_the_text():
    fusion = QFormerFusion(_qformer())
    text, image = _inputs()
    j = 3
    with torch.no_grad():
        ref, changed = fusion(text, image, causal_text=True), fusion(_with_token(text, j), image, causal_text=True)
        # text tokens before j, and every query, are unchanged by a change at j
        torch.testing.assert_close(changed.text_tokens[:, :j], ref.text_tokens[:, :j], rtol=0, atol=0)
        torch.testing.assert_close(changed.image_tokens, ref.image_tokens, rtol=0, atol=0)
        assert (changed.text_tokens[:, j:] - ref.text_tokens[:, j:]).abs().max() > 1e-3  # ... and j on are not
        # matching mode: the queries (and the pooled vector ITM reads) see the whole text
        both, both_changed = fusion(text, image), fusion(_with_token(text, 5), image)
        assert (both_changed.pooled - both.pooled).abs().max() > 1e-3
        assert (both_changed.text_tokens[:, 0] - both.text_tokens[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("causal_text", [False, True])
def test_padding_never_changes_outputs(causal_text):
    fusion = QFormerFusion(_qformer())
    text, image = _inputs()
    pad_t, pad_v = 3, 2
    padded_text = Features(
        torch.cat([text.tokens, torch.full((2, pad_t, D), 7.0)], 1),
        torch.cat([text.mask, torch.zeros(2, pad_t, dtype=torch.bool)], 1),
        text.pooled,
    )
    padded_image = Features(
        torch.cat([image.tokens, torch.full((2, pad_v, DI), -5.0)], 1),
        torch.cat([image.mask, torch.zeros(2, pad_v, dtype=torch.bool)], 1),
        image.pooled,
    )
    with torch.no_grad():
        ref = fusion(text, image, causal_text=causal_text)
        out = fusion(padded_text, padded_image, causal_text=causal_text)
    torch.testing.assert_close(out.text_tokens[:, : text.tokens.shape[1]], ref.text_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.image_tokens, ref.image_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-5, atol=1e-6)


def test_stage_two_connector_is_the_queries_of_the_generation_mode():
    """In generation mode the queries see no text, so they equal the image-only pass of stage 2."""
    qformer = _qformer()
    text, image = _inputs()
    with torch.no_grad():
        stage1 = QFormerFusion(qformer)(text, image, causal_text=True)
        stage2 = QueryConnector(qformer)(image)
    torch.testing.assert_close(stage2.tokens, stage1.image_tokens, rtol=1e-5, atol=1e-6)
    assert stage2.tokens.shape == (2, N, D) and bool(stage2.mask.all())


def test_region_modeling_is_refused_for_the_qformer():
    with pytest.raises(ConfigError, match="objective 'mrm' needs a fusion with image_tokens"):
        validate(compose_cfg(["model=blip2", "objective=[itc,mrm]"]))


@pytest.mark.parametrize(
    "model, objectives", [("blip2", "itc,itm,lm"), ("blip2_lm", "itc,lm")], ids=["stage1", "stage2"]
)
def test_presets_train_end_to_end(model, objectives, tiny_cfg):
    cfg = tiny_cfg(f"model={model}", f"objective=[{objectives}]", "eval.protocols=[retrieval,captioning]")
    record = run(cfg)
    assert record["status"] == "completed"
    assert "test/captioning/cider" in record["metrics"]
