"""BLIP-2's Q-Former: who sees whom (no future-token leakage in generation mode, text reaches the queries
in matching mode), padding never changes outputs, the stage-2 connector is the stage-1 queries of the
generation mode, and both presets train through the CLI pipeline."""

from __future__ import annotations

import pytest
import torch

from mmbench.config import ConfigError
from mmbench.models.fusion.qformer import QFormer, QFormerFusion, QueryConnector
from mmbench.models.outputs import Features
from mmbench.pipeline import run
from mmbench.validation import validate
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


def test_blip2_stage_two_starts_from_a_stage_one_run(tiny_cfg, tmp_path):
    """experiment=blip2_stage2 model.init_from=<stage-1 run>: the ViT and the Q-Former (renamed into the
    connector slot) are stage 1's, the projector and the language model are fresh, and the stage-2 prefix
    is exactly what stage 1's queries computed in generation mode."""
    from mmbench.builder import build_datamodule, build_module

    stage1 = tiny_cfg("experiment=blip2_stage1", "hydra.mode=RUN", "eval.protocols=[retrieval]")
    assert run(stage1)["status"] == "completed"
    run_dir = stage1.paths.output_dir
    # the stages share their sizes: TINY's one fusion layer is stage 2's one Q-Former layer
    stage2 = tiny_cfg(
        "experiment=blip2_stage2",
        "hydra.mode=RUN",
        "objective=[itc,lm]",
        f"model.init_from={run_dir}",
        "model.sizes.tiny.qformer_depth=1",
    )
    dm = build_datamodule(stage2)
    model = build_module(stage2, dm.info).model.eval()

    ckpt = torch.load(f"{run_dir}/checkpoints/best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    ours = model.state_dict()
    for key, value in ckpt.items():
        if key.startswith("model.vision_encoder."):
            assert torch.equal(ours[key[len("model.") :]], value), key
        if key.startswith("model.fusion.qformer."):
            assert torch.equal(ours["fusion.connector.qformer." + key[len("model.fusion.qformer.") :]], value), key
    assert not any("prefix.proj" in k for k in ckpt)  # the projector into the LM starts fresh

    one = build_module(stage1, dm.info).model.eval()
    one.load_state_dict({k[len("model.") :]: v for k, v in ckpt.items() if k.startswith("model.")})
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        image = model.encode_image(batch)
        text = one.encode_text(batch["input_ids"], batch["attention_mask"], causal=True)
        queries = one.fuse(text, one.encode_image(batch), causal_text=True).image_tokens  # (B, N, D)
        torch.testing.assert_close(model.fusion.connector(image).tokens, queries, rtol=1e-5, atol=1e-5)


def test_blip2_stage_two_without_a_stage_one_run_is_refused():
    with pytest.raises(
        ConfigError, match="later training stage .model.init_from_required.: give the run it starts from"
    ):
        validate(compose_cfg(["experiment=blip2_stage2"]))
    validate(compose_cfg(["experiment=blip2_stage1"]))  # stage 1 needs nothing
