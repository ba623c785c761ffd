"""Flamingo's connector into a decoder LM (fusion=gated_xattn_lm): closed gates leave the LM exactly as it is
without an image, open gates let the image through without leaking future tokens, padding changes nothing
real, the HF hook path equals the from-scratch decoder with the same GPT-2 weights, cached decoding equals
the full run, and a tiny run through mmbench-train."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmbench.config import ConfigError
from mmbench.models.decoder import GPTDecoder, HFDecoder
from mmbench.models.fusion.gated_xattn_lm import GatedXAttnLMFusion
from mmbench.validation import validate
from tests.conftest import TINY, compose_cfg
from tests.test_prefix import _hf_gpt2, built, sample
from tests.test_train import _cli

GATED = "fusion=gated_xattn_lm"


def _open_gates(model, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in model.fusion.blocks:
            block.alpha_xattn.fill_(value)
            block.alpha_ffn.fill_(-value)


def _lm_alone(model, ids, mask):
    """The language model's logits on the text alone, no image anywhere."""
    lm = model.language_model
    return lm.logits(lm.run(lm.embed(ids), mask.bool()))


@pytest.mark.parametrize("hf", [False, True], ids=["gpt", "hf-gpt2"])
def test_closed_gates_leave_the_language_model_unchanged_and_open_gates_let_the_image_in(hf, tmp_path):
    _, model, lm = built("llava", GATED, *(_hf_gpt2(tmp_path) if hf else []))
    model.eval()
    assert isinstance(model.fusion, GatedXAttnLMFusion)
    assert isinstance(model.language_model, HFDecoder if hf else GPTDecoder)
    assert len(model.fusion.blocks) == model.language_model.num_layers == 2
    ids, mask, batch = sample()
    with torch.no_grad():
        image = model.encode_image(batch)
        torch.testing.assert_close(
            lm.logits(model, ids, mask, image), _lm_alone(model, ids, mask), atol=1e-5, rtol=1e-5
        )
        _open_gates(model)
        base = lm.logits(model, ids, mask, image)
        assert (base - _lm_alone(model, ids, mask)).abs().amax(-1).gt(1e-4).all()
        other = model.encode_image({"pixel_values": -batch["pixel_values"]})
        assert (lm.logits(model, ids, mask, other) - base).abs().amax(-1).gt(1e-4).all()  # the image gets through


def test_no_future_token_leakage_and_causal_text_switches_nothing():
    _, model, lm = built("llava", GATED)
    model.eval()
    _open_gates(model)
    ids, mask, batch = sample()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        image = model.encode_image(batch)
        base = lm.logits(model, ids, mask, image)
        for t in (0, 3, 6):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(7, 50, (2, 7 - t), generator=g)
            new = lm.logits(model, changed, mask, image)
            torch.testing.assert_close(new[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
        text = model.encode_text(ids, mask)
        a, b = model.fuse(text, image, causal_text=False), model.fuse(text, image, causal_text=True)
        torch.testing.assert_close(a.text_tokens, b.text_tokens, atol=0, rtol=0)


def test_padding_never_changes_outputs_at_real_positions():
    _, model, _ = built("llava", GATED)
    model.eval()
    _open_gates(model)
    ids, mask, batch = sample(B=2, T=8)
    mask[1, 5:] = 0
    longer_ids = torch.cat([ids, torch.randint(7, 50, (2, 4))], 1)
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        image = model.encode_image(batch)
        a = model.fuse(model.encode_text(ids, mask), image)
        b = model.fuse(model.encode_text(longer_ids, longer_mask), image)
    real = mask.bool()
    torch.testing.assert_close(a.text_tokens[real], b.text_tokens[:, :8][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.pooled[1], a.text_tokens[1, 4], atol=0, rtol=0)  # the last real token


def test_the_hf_hook_path_equals_the_from_scratch_decoder_with_the_same_weights(tmp_path):
    """GPT-2 imported into GPTDecoder (model.init_from) and the same GPT-2 run by transformers with the gated
    blocks hooked in before its layers: the same logits."""
    hf_overrides = _hf_gpt2(tmp_path)
    _, ours, lm = built("llava", GATED, f"model.init_from={tmp_path}")
    _, theirs, _ = built("llava", GATED, *hf_overrides)
    for model in (ours, theirs):
        model.eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("language_model.")}
    theirs.load_state_dict(state, strict=False)
    _open_gates(ours)
    _open_gates(theirs)
    ids, mask, batch = sample()
    mask[1, 6:] = 0
    with torch.no_grad():
        a = lm.logits(ours, ids, mask, ours.encode_image(batch))
        b = lm.logits(theirs, ids, mask, theirs.encode_image(batch))
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hf", [False, True], ids=["gpt", "hf-gpt2"])
def test_cached_decoding_equals_the_full_run_every_step(hf, tmp_path):
    _, model, lm = built("llava", GATED, *(_hf_gpt2(tmp_path) if hf else []))
    model.eval()
    _open_gates(model)
    ids, _, batch = sample(B=3, T=7)
    with torch.no_grad():
        image = model.encode_image(batch)
        cached, full = lm._decoding(model, image), lm._decoding(model, image, use_cache=False)
        assert cached.cached and not full.cached
        for t in range(1, 7):
            if t == 4:  # beams reorder the rows: the LM cache and the visual tokens follow
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


def test_every_n_th_layer_and_refusals():
    _, model, _ = built("llava", GATED, "fusion.every=2", "model.sizes.tiny.fusion_depth=3")
    assert model.language_model.num_layers == 3 and len(model.fusion.blocks) == 2  # before layers 0 and 2
    with pytest.raises(ConfigError, match="needs a language model|language model"):
        validate(compose_cfg(["model=flamingo", GATED, "objective=[lm]"]))
    with pytest.raises(ConfigError, match="objective 'mrm' needs a fusion with image_tokens"):
        validate(compose_cfg(["model=llava", GATED, "objective=[mrm]"]))


def test_trains_end_to_end_through_mmbench_train(cache_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("objective.")]
    res = _cli(["model=llava", GATED, "objective=[lm,vqa]", *overrides, "eval.protocols=[vqa,captioning]"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (record_path,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed" and record["choices"]["fusion"] == "gated_xattn_lm"
    assert math.isfinite(record["metrics"]["test/lm/ppl"]) and "test/captioning/cider" in record["metrics"]
    assert record["complexity"]["params_per_component"]["fusion"] > 0
