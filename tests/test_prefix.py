"""The prefix connector (fusion/prefix.py) and its presets, model=llava and model=frozen: the language
model part registered once and shared, no future-token leakage with an image prefix, padding, the LM's
own head, freezing, generation, refusals, an HF language model behind the connector, and tiny runs
through the real entry point."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

from mmbench.builder import build_model, build_module, data_kwargs, model_kwargs
from mmbench.config import ConfigError
from mmbench.data.datamodule import DataInfo
from mmbench.models.decoder import GPTDecoder, HFDecoder
from mmbench.models.fusion.prefix import MLPProjector, PooledPrefix, PrefixFusion, TokenPrefix
from mmbench.models.text_lm import LMEmbeddings
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import TINY, compose_cfg
from tests.test_train import _cli

INFO = DataInfo.of_vocab(50, max_text_len=16, image_size=48)
SMALL = [
    "model.sizes.tiny.dim=32",
    "model.sizes.tiny.heads=2",
    "model.sizes.tiny.vision_depth=1",
    "model.sizes.tiny.fusion_depth=2",
    "data.max_text_len=16",
]
PRESETS = ("llava", "frozen")


def built(preset: str, *overrides: str, objectives: str = "[lm]"):
    cfg = compose_cfg([f"model={preset}", f"objective={objectives}", *SMALL, *overrides])
    validate(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, INFO)
    lm = instantiate(cfg.objective.lm, **data_kwargs(cfg.objective.lm, INFO), **model_kwargs(cfg.objective.lm, model))
    return cfg, model, lm


def sample(B=2, T=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 50, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    return ids, mask, {"pixel_values": torch.randn(B, 3, 48, 48, generator=g)}


@pytest.mark.parametrize("preset", PRESETS)
def test_the_language_model_is_one_part_shared_by_reference(preset):
    cfg, model, lm = built(preset)
    decoder = model.language_model
    assert isinstance(decoder, GPTDecoder)
    assert isinstance(model.text_encoder, LMEmbeddings) and isinstance(model.fusion, PrefixFusion)
    assert model.text_encoder.lm is decoder and model.fusion.lm is decoder  # the very module, not a copy
    assert model.word_embeddings is decoder.word_embeddings
    # registered once: its parameters are listed under model.language_model only
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert len(names) == len(set(id(p) for p in model.parameters()))
    assert not any(n.startswith(("text_encoder.", "fusion.lm.")) for n in names)
    assert sum(n.startswith("language_model.") for n in names) == len(list(decoder.parameters()))
    assert not any(k.startswith("fusion.lm") for k in model.state_dict())
    # the LM objective predicts with the language model's own head: no MLMHead of its own
    assert lm.head is None and not list(lm.parameters())
    # the prefix: every ViT token (LLaVA) or the pooled image as 2 tokens (Frozen)
    layout = {"llava": TokenPrefix, "frozen": PooledPrefix}[preset]
    assert isinstance(model.fusion.prefix, layout)
    ids, mask, batch = sample()
    with torch.no_grad():
        image = model.encode_image(batch)
        joint = model.fuse(model.encode_text(ids, mask), image)
    N = image.tokens.shape[1] if preset == "llava" else 2
    assert joint.text_tokens.shape == (2, 8, 32) and joint.image_tokens.shape == (2, N, 32)


@pytest.mark.parametrize(
    "fusion, prefix_tokens",
    [("prefix", 10), ("prefix_pooled", 2), ("prefix_qformer", 8), ("prefix_resampler", 8)],
)
def test_every_connector_of_the_connector_sweep_gives_its_prefix_and_leaks_no_future_token(fusion, prefix_tokens):
    """The connectors of experiment=connector_sweep on LLaVA's parts: 3x3 patches + [CLS] through the MLP,
    the pooled image to 2 tokens, 8 Q-Former queries, 8 resampler latents; the text stays causal."""
    _, model, lm = built("llava", f"fusion={fusion}")
    model.eval()
    ids, mask, batch = sample()
    with torch.no_grad():
        image = model.encode_image(batch)
        joint = model.fuse(model.encode_text(ids, mask), image)
        assert joint.image_tokens.shape == (2, prefix_tokens, 32) and joint.text_tokens.shape == (2, 8, 32)
        base = lm.logits(model, ids, mask, image)
        changed = ids.clone()
        changed[:, 4:] = (changed[:, 4:] + 1 - 7) % 43 + 7  # other tokens from position 4 on
        torch.testing.assert_close(lm.logits(model, changed, mask, image)[:, :4], base[:, :4], atol=1e-5, rtol=1e-5)
        other = model.encode_image({"pixel_values": -batch["pixel_values"]})
        assert (lm.logits(model, ids, mask, other) - base).abs().amax(-1).gt(1e-4).all()  # the image gets through


@pytest.mark.parametrize("preset", PRESETS)
def test_no_future_token_leakage_with_an_image_prefix(preset):
    _, model, lm = built(preset)
    model.eval()
    ids, mask, batch = sample()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        image = model.encode_image(batch)
        base = lm.logits(model, ids, mask, image)  # (B, T, V)
        for t in (0, 3, 6):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(7, 50, (2, 7 - t), generator=g)
            new = lm.logits(model, changed, mask, image)
            torch.testing.assert_close(new[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            differs = changed[:, t + 1] != ids[:, t + 1]
            assert (new[:, t + 1] - base[:, t + 1]).abs().amax(-1)[differs].gt(1e-4).all(), t
        # the text is conditioned on the image prefix
        other = model.encode_image({"pixel_values": torch.randn(2, 3, 48, 48, generator=g)})
        assert (lm.logits(model, ids, mask, other) - base).abs().amax(-1).gt(1e-4).all()
        # the run is always causal: causal_text changes nothing
        text = model.encode_text(ids, mask)
        a, b = model.fuse(text, image, causal_text=False), model.fuse(text, image, causal_text=True)
        torch.testing.assert_close(a.text_tokens, b.text_tokens, atol=0, rtol=0)
        torch.testing.assert_close(a.pooled, b.pooled, atol=0, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_padding_never_changes_outputs_at_real_positions(preset):
    _, model, _ = built(preset)
    model.eval()
    ids, mask, batch = sample(B=2, T=8)
    mask[1, 5:] = 0  # row 1 has 5 real tokens
    g = torch.Generator().manual_seed(2)
    longer_ids = torch.cat([ids, torch.randint(7, 50, (2, 4), generator=g)], 1)  # more padding, random content
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    longer_ids[1, 5:] = torch.randint(7, 50, (7,), generator=g)
    with torch.no_grad():
        image = model.encode_image(batch)
        a = model.fuse(model.encode_text(ids, mask), image)
        b = model.fuse(model.encode_text(longer_ids, longer_mask), image)
        alone = model.fuse(model.encode_text(ids[1:, :5], mask[1:, :5]), image.index(torch.tensor([1])))
    real = mask.bool()
    torch.testing.assert_close(a.text_tokens[real], b.text_tokens[:, :8][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text_tokens[1, :5], alone.text_tokens[0], atol=1e-5, rtol=1e-5)
    # pooled = the state at the last real text token (the only one that has read image and whole text)
    torch.testing.assert_close(a.pooled[1], a.text_tokens[1, 4], atol=0, rtol=0)
    torch.testing.assert_close(a.pooled[0], a.text_tokens[0, 7], atol=0, rtol=0)


def test_padded_image_tokens_are_not_attended():
    torch.manual_seed(0)
    lm = GPTDecoder(vocab_size=50, dim=32, depth=2, heads=2, max_len=32).eval()
    fusion = PrefixFusion(lm, image_dim=24, projector=MLPProjector).eval()
    from mmbench.models.outputs import Features

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 5, 24, generator=g)
    image_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    text = Features(lm.embed(torch.randint(7, 50, (2, 6), generator=g)), torch.ones(2, 6, dtype=torch.bool), None)
    noisy = tokens.clone()
    noisy[1, 3:] = torch.randn(2, 24, generator=g) * 100
    with torch.no_grad():
        a = fusion(text, Features(tokens, image_mask, tokens.mean(1)))
        b = fusion(text, Features(noisy, image_mask, tokens.mean(1)))
    torch.testing.assert_close(a.text_tokens, b.text_tokens, atol=1e-5, rtol=1e-5)
    real = noisy.clone()
    real[1, 2] += 1.0  # a real image token does reach the text
    with torch.no_grad():
        c = fusion(text, Features(real, image_mask, tokens.mean(1)))
    assert (c.text_tokens[1] - a.text_tokens[1]).abs().amax(-1).gt(1e-4).all()


def test_frozen_language_model_stays_fixed_while_the_prefix_learns():
    cfg = compose_cfg(["model=frozen", "objective=[lm]", *SMALL, "optimizer.lr=0.01"])
    validate(cfg)
    torch.manual_seed(0)
    module = build_module(cfg, INFO)
    module.scheduler_factory = None
    module.train()
    model = module.model
    assert model.frozen == ("language_model",) and not model.language_model.training
    assert not any(p.requires_grad for p in model.language_model.parameters())
    optimizer = module.configure_optimizers()
    lm_ids = {id(p) for p in model.language_model.parameters()}
    assert not any(id(p) in lm_ids for g in optimizer.param_groups for p in g["params"])
    before_lm = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    before_proj = model.fusion.prefix.proj.weight.clone()
    before_vision = next(model.vision_encoder.parameters()).clone()
    ids, mask, batch = sample(B=4)
    batch.update(input_ids=ids, attention_mask=mask)
    loss = module.shared_step(batch, "train")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for k, v in model.language_model.state_dict().items():
        torch.testing.assert_close(v, before_lm[k], rtol=0, atol=0)
    assert not torch.equal(model.fusion.prefix.proj.weight, before_proj)
    assert not torch.equal(next(model.vision_encoder.parameters()), before_vision)


def test_language_model_lr_mult_gets_its_own_group():
    cfg = compose_cfg(["model=llava", "objective=[lm]", *SMALL, "language_model.lr_mult=0.1", "optimizer.lr=0.01"])
    module = build_module(cfg, INFO)
    module.scheduler_factory = None
    optimizer = module.configure_optimizers()
    lm_ids = {id(p) for p in module.model.language_model.parameters()}
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))  # every parameter once
    assert lm_ids <= set(seen)
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= lm_ids or not ids & lm_ids
        assert group["lr"] == pytest.approx(0.001 if ids <= lm_ids else 0.01)


def test_greedy_and_beam_generation_of_a_tiny_llava():
    _, model, lm = built("llava")
    model.eval()
    _, _, batch = sample(B=3)
    greedy = lm.generate(model, batch, max_len=6, bos_id=2, eos_id=3)
    assert greedy.dtype == torch.long and greedy.shape[0] == 3 and 1 <= greedy.shape[1] <= 6
    assert ((greedy >= 0) & (greedy < 50)).all()
    assert lm.beam_search(model, model.encode_image(batch), 6, 1, 2, 3).tolist() == greedy.tolist()
    beam = lm.generate(model, batch, max_len=6, num_beams=2, bos_id=2, eos_id=3)
    assert beam.shape[0] == 3 and beam.shape[1] <= 6


def _hf_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2))
    ref.save_pretrained(tmp_path)
    return ["language_model=hf", f"language_model.name={tmp_path}"]


@pytest.mark.parametrize(
    "preset, overrides",
    [("llava", []), ("frozen", []), ("blip2_lm", []), ("llava", ["hf"])],
    ids=["llava", "frozen", "blip2_lm", "llava-hf-gpt2"],
)
def test_cached_decoding_equals_the_full_run_every_step(preset, overrides, tmp_path):
    """Teacher-forced along a fixed sequence, the cached run's next-token log-probabilities equal a full
    re-run's at every step, also after beams are reordered; greedy and beam search give the same tokens."""
    if overrides == ["hf"]:
        overrides = _hf_gpt2(tmp_path)
    _, model, lm = built(preset, *overrides)
    model.eval()
    ids, _, batch = sample(B=3, T=7)
    with torch.no_grad():
        image = model.encode_image(batch)
        cached, full = lm._decoding(model, image), lm._decoding(model, image, use_cache=False)
        assert cached.cached and not full.cached
        for t in range(1, 7):
            if t == 4:  # reorder rows as a beam search does: the cache must follow
                rows = torch.tensor([2, 0, 0])
                ids, image = ids[rows], image.index(rows)
                cached.select(rows)
                full.image = image
            torch.testing.assert_close(
                cached.next_log_probs(ids[:, :t]), full.next_log_probs(ids[:, :t]), atol=1e-4, rtol=1e-4
            )
        for beams in (1, 3):
            fast = lm.generate(model, batch, max_len=6, num_beams=beams, bos_id=2, eos_id=3)
            slow = lm.generate(model, batch, max_len=6, num_beams=beams, bos_id=2, eos_id=3, use_cache=False)
            assert fast.tolist() == slow.tolist(), beams


def test_a_fusion_without_a_cache_decodes_by_full_re_runs():
    from tests.test_layers_and_model import tiny_model

    model = tiny_model()
    _, _, lm = built("llava")
    assert not lm._decoding(model, None).cached  # no start_decoding / per-token text: the full re-run path


def test_lm_objective_built_for_a_language_model_refuses_a_model_without_one():
    _, _, lm = built("llava")
    from tests.test_layers_and_model import inputs, tiny_model

    model = tiny_model()
    ids, mask, batch = inputs(B=2, T=6)
    with pytest.raises(ValueError, match="built for a model with a language model part"):
        lm.logits(model, ids, mask, model.encode_image(batch))


def test_an_hf_language_model_behind_the_connector(tmp_path):
    """language_model=hf: the connector feeds [projected image; the model's own embeddings] to the HF model;
    the text logits equal GPT2LMHeadModel's on the same input embeddings."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2))
    ref.save_pretrained(tmp_path)
    ref.eval()
    _, model, lm = built("llava", "language_model=hf", f"language_model.name={tmp_path}", "language_model.freeze=true")
    model.eval()
    assert isinstance(model.language_model, HFDecoder) and model.frozen == ("language_model",)
    assert lm.head is None
    ids, mask, batch = sample()
    with torch.no_grad():
        image = model.encode_image(batch)
        ours = lm.logits(model, ids, mask, image)  # (B, T, V)
        prefix = model.fusion.prefix.proj(image.tokens)  # (B, N, H)
        x = torch.cat([prefix, ref.get_input_embeddings()(ids)], 1)
        want = ref(inputs_embeds=x).logits[:, prefix.shape[1] :]
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


def test_refusals():
    with pytest.raises(ConfigError, match="objective 'mrm' needs a fusion with image_tokens"):
        validate(compose_cfg(["model=llava", "objective=[mrm]"]))
    with pytest.raises(ConfigError, match="uses? a language model but none is configured; add one: language_model=gpt"):
        validate(compose_cfg(["model=frozen", "language_model=none", "objective=[lm]"]))
    with pytest.raises(ConfigError, match="language_model=GPTDecoder is configured but no part runs it"):
        validate(compose_cfg(["model=vilt", "language_model=gpt", "objective=[lm]"]))
    with pytest.raises(ValueError, match=r"hidden size is 32 but model.dim=64.*set model.dim=32"):
        from mmbench.models.model import MultimodalModel
        from tests.test_layers_and_model import tiny_model

        m = tiny_model()
        MultimodalModel(m.text_encoder, m.vision_encoder, m.fusion, dim=64, language_model=GPTDecoder(50, 32, 1, 2))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_end_to_end_through_mmbench_train(preset, cache_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("objective.")]
    res = _cli([f"model={preset}", "objective=[lm,vqa]", *overrides, "eval.protocols=[vqa,captioning]"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (record_path,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed" and record["choices"]["model"] == preset
    metrics = record["metrics"]
    assert math.isfinite(metrics["test/lm/ppl"]) and metrics["test/lm/ppl"] > 1
    assert 0 <= metrics["test/vqa/acc"] <= 1
    assert "test/captioning/cider" in metrics  # captions generated through the language model
    components = record["complexity"]["params_per_component"]
    assert components["language_model"] > 0 and components["text_encoder"] == 0


def test_llava_with_a_frozen_hf_language_model_trains_end_to_end(cache_dir, tmp_path):
    """language_model=hf through the whole pipeline (train, checkpoint, test, generated captions), the LM frozen."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=1000, n_embd=32, n_layer=1, n_head=2, n_positions=128)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    overrides = [o for o in TINY if not o.startswith("objective.")]
    cfg = compose_cfg(
        [
            *overrides,
            "model=llava",
            "language_model=hf",
            f"language_model.name={tmp_path / 'gpt2'}",
            "language_model.freeze=true",
            "objective=[lm,vqa]",
            "eval.protocols=[captioning]",
        ],
        tmp_path / "run",
    )
    record = run(cfg)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert math.isfinite(metrics["test/lm/ppl"]) and "test/captioning/cider" in metrics
    components = record["complexity"]["params_per_component"]
    assert components["language_model"] > 0
    complexity = record["complexity"]
    assert complexity["trainable_params"] == complexity["params"] - components["language_model"]  # frozen
