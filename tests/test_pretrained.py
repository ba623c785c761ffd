"""Pretrained encoders (encoder/text=hf, encoder/vision=hf, encoder/vision=timm), freeze and lr_mult.

Every checkpoint is a tiny random model written by the test with `save_pretrained` (or a timm state
dict file); nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmbench.builder import build_datamodule, build_module  # noqa: E402
from mmbench.models.text_hf import HFTextEncoder  # noqa: E402
from mmbench.models.vision.hf import HFVisionEncoder  # noqa: E402
from mmbench.models.vision.timm import TimmEncoder  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

TINY_BERT = dict(
    vocab_size=1000,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
)
TIMM_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(root / "bert")
    transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).save_pretrained(root / "vit")
    transformers.ViTImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "vit")
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, **TIMM_KW).state_dict(), root / "timm_vit.pth")
    return root


def ids_and_mask(B=2, T=7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


def test_hf_text_encoder_is_the_automodel(checkpoints):
    ref = transformers.BertModel.from_pretrained(checkpoints / "bert").eval()
    enc = HFTextEncoder(str(checkpoints / "bert"), dim=32).eval()
    ids, mask = ids_and_mask()
    with torch.no_grad():
        out, want = enc(ids, mask), ref(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.tokens, want.last_hidden_state)
    torch.testing.assert_close(out.pooled, want.pooler_output)  # BERT pooler by default
    assert out.mask.tolist() == mask.bool().tolist()
    assert enc.word_embeddings is enc.model.get_input_embeddings()


def test_hf_text_encoder_projects_to_model_width_and_ties_through_projection(checkpoints):
    enc = HFTextEncoder(str(checkpoints / "bert"), dim=48).eval()
    ids, mask = ids_and_mask()
    out = enc(ids, mask)
    assert out.tokens.shape == (2, 7, 48) and out.pooled.shape == (2, 48)
    assert enc.word_embeddings.weight.shape == (1000, 48)  # an MLM decoder can tie to it at width 48
    with pytest.raises(ValueError, match="bidirectional"):
        enc(ids, mask, causal=True)


def test_hf_vision_encoder_resizes_and_normalises_like_the_processor(checkpoints):
    ref = transformers.ViTModel.from_pretrained(checkpoints / "vit").eval()
    enc = HFVisionEncoder(str(checkpoints / "vit"), dim=24).eval()
    pixels = torch.rand(2, 3, 48, 48) * 2 - 1  # the datamodule's [-1, 1] at data.image_size=48
    x01 = torch.nn.functional.interpolate((pixels + 1) / 2, size=(32, 32), mode="bilinear", antialias=True)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        out, want = enc({"pixel_values": pixels}), ref(pixel_values=(x01 - mean) / std)
    torch.testing.assert_close(out.tokens, want.last_hidden_state)
    torch.testing.assert_close(out.pooled, want.pooler_output)
    assert out.tokens.shape == (2, 17, 24) and out.mask.all()


def test_hf_vision_encoder_takes_the_vision_tower_of_clip(tmp_path):
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=99,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    vision = HFVisionEncoder(str(tmp_path / "clip"), dim=16, mean=[0.5] * 3, std=[0.5] * 3)
    text = HFTextEncoder(str(tmp_path / "clip"), dim=16)
    assert "Vision" in type(vision.model).__name__ and "Text" in type(text.model).__name__
    out = vision({"pixel_values": torch.zeros(1, 3, 32, 32)})
    assert out.tokens.shape == (1, 5, 16) and out.pooled.shape == (1, 16)


def test_timm_encoder_loads_a_local_weight_file(checkpoints):
    state = torch.load(checkpoints / "timm_vit.pth", weights_only=True)
    enc = TimmEncoder(
        "vit_tiny_patch16_224", dim=16, checkpoint=str(checkpoints / "timm_vit.pth"), model_kwargs=TIMM_KW
    ).eval()
    torch.testing.assert_close(enc.model.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    out = enc({"pixel_values": torch.rand(2, 3, 48, 48) * 2 - 1})  # resized to the model's 32x32
    assert out.tokens.shape == (2, 17, 16) and out.pooled.shape == (2, 16) and out.mask.all()


def test_timm_cnn_feature_map_becomes_tokens():
    enc = TimmEncoder("resnet18", dim=16).eval()
    out = enc({"pixel_values": torch.zeros(1, 3, 64, 64)})
    assert out.tokens.shape == (1, 4, 16) and out.pooled.shape == (1, 16)  # 2x2 map at stride 32


def test_uncached_hub_id_fails_fast_offline():
    code = "from mmbench.models.text_hf import HFTextEncoder\nHFTextEncoder('mmbench-tests/no-such-model-xyz', dim=8)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "not in the Hugging Face cache" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr, proc.stderr[-2000:]


def test_freeze_and_lr_mult(checkpoints, tiny_cfg):
    cfg = tiny_cfg(
        "encoder/text=hf",
        f"encoder.text.name={checkpoints / 'bert'}",
        "encoder.text.freeze=true",
        "encoder/vision=timm",
        "encoder.vision.name=vit_tiny_patch16_224",
        f"encoder.vision.checkpoint={checkpoints / 'timm_vit.pth'}",
        "+encoder.vision.model_kwargs={img_size:32,patch_size:8,embed_dim:32,depth:2,num_heads:2}",
        "encoder.vision.lr_mult=0.1",
        "objective=[itc,itm]",
        "optimizer.lr=0.01",
    )
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    module.scheduler_factory = None
    module.train()
    model = module.model
    assert model.frozen == ("text_encoder",) and not model.text_encoder.training  # eval-mode dropout
    assert not any(p.requires_grad for p in model.text_encoder.parameters())

    optimizer = module.configure_optimizers()
    vision_ids = {id(p) for p in model.vision_encoder.parameters()}
    text_ids = {id(p) for p in model.text_encoder.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert not ids & text_ids  # frozen parameters are not optimised
        expected = 0.01 * 0.1 if ids <= vision_ids else 0.01
        assert (ids <= vision_ids) or not (ids & vision_ids)  # groups never mix multipliers
        assert group["lr"] == pytest.approx(expected)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {cfg.weight_decay, 0.0}  # decay split kept

    before_text = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    before_vision = model.vision_encoder.model.patch_embed.proj.weight.clone()
    batch = next(iter(dm.train_dataloader()))
    loss = module.shared_step(batch, "train")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for k, v in model.text_encoder.state_dict().items():
        torch.testing.assert_close(v, before_text[k], rtol=0, atol=0)
    assert not torch.equal(model.vision_encoder.model.patch_embed.proj.weight, before_vision)
