"""LoRA on a model part (mmbench/models/lora.py, through peft): only the adapters train, an adapted part starts
as the part itself, merged weights give the adapters' output, Hugging Face parts take peft's per-architecture
targets, and a LoRA run trains, checkpoints and resumes like any run (experiment=llava_lora, from a stage-1
run). Every HF checkpoint is a tiny random model written here with `save_pretrained`."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer

from mmbench.builder import build_datamodule, build_module
from mmbench.models.decoder import GPTDecoder, HFDecoder
from mmbench.models.lora import LoraSettings, apply_lora, merge_lora
from mmbench.models.text_hf import HFTextEncoder
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import TINY, compose_cfg, stopped_then_resumed

TINY_PARTS = [o for o in TINY if not o.startswith("objective.")]
DIM, DEPTH, R = 32, 2, 4


def _decoder(seed: int = 0) -> GPTDecoder:
    torch.manual_seed(seed)
    return GPTDecoder(vocab_size=50, dim=DIM, depth=DEPTH, heads=4).eval()


def _hidden(decoder, ids: torch.Tensor) -> torch.Tensor:
    return decoder.run(decoder.embed(ids), torch.ones_like(ids, dtype=torch.bool))


def test_only_the_adapters_of_q_and_v_train_and_the_adapted_part_starts_as_itself():
    ids = torch.randint(0, 50, (3, 7))
    plain, adapted = _decoder(), _decoder()
    count = apply_lora(adapted, LoraSettings(r=R), "language_model")
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == {
        f"blocks.{i}.sublayers.self_attn.{layer}.lora_{ab}.default.weight"
        for i in range(DEPTH)
        for layer in ("q", "v")
        for ab in "AB"
    }
    assert count == DEPTH * 2 * (R * DIM + DIM * R)  # per layer and target: A (r x dim) and B (dim x r)
    # B starts at zero: the adapted decoder computes exactly what the plain one does
    assert torch.equal(_hidden(adapted, ids), _hidden(plain, ids))


def test_merged_weights_are_w_plus_scaled_ba_and_give_the_adapters_output():
    ids = torch.randint(0, 50, (3, 7))
    decoder = _decoder()
    plain_keys = set(decoder.state_dict())
    apply_lora(decoder, LoraSettings(r=R, alpha=2 * R, target_modules=("q", "fc1")), "language_model")
    torch.manual_seed(1)
    for name, p in decoder.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.5)  # a trained adapter
    q = decoder.blocks[0].sublayers.self_attn.q
    expected = q.base_layer.weight + 2.0 * q.lora_B.default.weight @ q.lora_A.default.weight  # alpha / r = 2
    adapted_out = _hidden(decoder, ids)
    assert merge_lora(decoder) == 2 * DEPTH
    assert not any(isinstance(m, BaseTunerLayer) for m in decoder.modules())
    assert set(decoder.state_dict()) == plain_keys  # a plain decoder again
    torch.testing.assert_close(decoder.blocks[0].sublayers.self_attn.q.weight, expected)
    torch.testing.assert_close(_hidden(decoder, ids), adapted_out, rtol=1e-5, atol=1e-5)


def test_hugging_face_parts_take_peft_targets_for_their_architecture(tmp_path):
    gpt2 = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=60, n_positions=64)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(tmp_path / "gpt2")
    bert = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    transformers.BertModel(bert).save_pretrained(tmp_path / "bert")

    lm = HFDecoder(str(tmp_path / "gpt2"))
    apply_lora(lm, LoraSettings(r=R), "language_model")
    assert {n.split(".")[-4] for n, p in lm.named_parameters() if p.requires_grad} == {"c_attn"}  # GPT-2's fused qkv
    text = HFTextEncoder(str(tmp_path / "bert"), dim=32)
    apply_lora(text, LoraSettings(r=R), "encoder.text")
    adapted = {n.split(".")[-4] for n, p in text.named_parameters() if p.requires_grad and "lora_" in n}
    assert adapted == {"query", "value"}


def test_a_target_that_names_no_layer_is_refused_with_the_layer_names():
    with pytest.raises(ValueError, match=r"language_model.lora.*target_modules.*named \['fc1', 'fc2', 'k', 'proj'"):
        apply_lora(_decoder(), LoraSettings(r=R, target_modules=("nope",)), "language_model")


def test_lora_settings_are_refused_by_the_rule_the_constructor_runs():
    with pytest.raises(ValueError, match=r"lora: r=-1: must be a rank >= 0"):
        LoraSettings.from_node({"r": -1})
    with pytest.raises(ValueError, match="unknown setting"):
        LoraSettings.from_node({"rank": 4})
    assert LoraSettings.from_node(None) == LoraSettings()


def _lm_state(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.language_model.")}


@pytest.fixture(scope="module")
def stage1(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1") / "run"
    assert run(compose_cfg(["experiment=llava_stage1", *TINY_PARTS], out))["status"] == "completed"
    return out


def _lora_args(stage1) -> list[str]:
    return [
        "experiment=llava_lora",
        *TINY_PARTS,
        "language_model.lora.r=4",
        f"model.init_from={stage1}",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=3",
    ]


def test_llava_lora_starts_from_stage_one_and_trains_the_projector_and_the_adapters(stage1, tmp_path):
    cfg = compose_cfg(_lora_args(stage1), tmp_path / "run")
    validate(cfg)
    module = build_module(cfg, build_datamodule(cfg).info)
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"fusion", "language_model"}
    assert all("lora_" in n for n in trainable if n.startswith("language_model."))
    adapters = sum(p.numel() for n, p in module.model.named_parameters() if "lora_" in n)
    assert adapters == 2 * (4 * 32 + 32 * 4)  # TINY: one LM layer (model.fusion_depth=1) of width 32, q and v

    record = run(cfg)
    assert record["status"] == "completed" and "test/vqa_generative/acc" in record["metrics"]
    trainable_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert record["complexity"]["trainable_params"] == trainable_params
    # the language model's own weights are stage 1's, unchanged by training; its adapters moved
    before, after = _lm_state(stage1 / "checkpoints" / "best.ckpt"), _lm_state(tmp_path / "run/checkpoints/last.ckpt")
    for key, value in after.items():
        if "lora_" in key:
            continue
        assert torch.equal(value, before[key.replace(".base_layer", "")]), key
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in after.items())


def test_a_lora_run_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(stage1, monkeypatch, tmp_path):
    args = _lora_args(stage1)
    reference = run(compose_cfg(args, tmp_path / "uninterrupted"))
    resumed = stopped_then_resumed(args, tmp_path / "stopped", 5, monkeypatch)
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # ==: bit-identical on CPU
