"""Weight import (`model.init_from`): numerical parity with the HF reference models.

For each family a tiny random HF model is saved with `save_pretrained` to a temp dir, the mmbench
preset is built from it through the real path (compose `model=<preset> model.init_from=<dir>`,
`build_model`), and both models see the same inputs in eval mode: max abs difference <= 1e-4.
The input conventions (padding, CLIP's BOS / EOS and pixel statistics, region boxes) are shared with
`scripts/bench_throughput.py --hf` through mmbench/hub_parity.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmbench.hub_parity import build_imported, clip_pixels, clip_text, region_inputs  # noqa: E402
from mmbench.hub_parity import text_inputs as make_text_inputs  # noqa: E402
from mmbench.models.convert import ImportConfigError  # noqa: E402
from mmbench.pipeline import run  # noqa: E402
from tests.conftest import ROOT, compose_cfg  # noqa: E402

ATOL = 1e-4
B, T, V = 2, 9, 100  # batch, text length, vocabulary of the tiny HF configs
COMMON = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
MAX_DIFF: dict[str, float] = {}  # family -> measured max abs difference (printed at the end)


def save(model, path):
    torch.manual_seed(0)
    for p in model.parameters():  # HF inits LayerNorms to (1, 0) and some tables to 0: randomise all
        torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(path)
    return model.eval()


def import_preset(preset: str, path, *overrides: str):
    return build_imported(compose_cfg([f"model={preset}", f"model.init_from={path}", *overrides]), V)


def text_inputs(seed=0):
    return make_text_inputs(B, T, V, seed)  # the second sequence padded from position 6


def check(family: str, ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape, (family, ours.shape, ref.shape)
    diff = (ours - ref).abs().max().item()
    MAX_DIFF[family] = max(MAX_DIFF.get(family, 0.0), diff)
    assert diff <= ATOL, (family, diff)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nparity max abs differences:", {k: f"{v:.2e}" for k, v in MAX_DIFF.items()})


def test_bert_into_text_encoder(tmp_path):
    config = transformers.BertConfig(vocab_size=V, num_hidden_layers=2, max_position_embeddings=16, **COMMON)
    ref = save(transformers.BertModel(config), tmp_path)
    model = import_preset(
        "lxmert", tmp_path, "model.sizes.tiny.dim=32", "model.sizes.tiny.text_depth=2", "data.max_text_len=16"
    )
    ids, mask = text_inputs()
    with torch.no_grad():
        ours, want = model.encode_text(ids, mask), ref(input_ids=ids, attention_mask=mask)
    check("bert", ours.tokens, want.last_hidden_state)
    check("bert", ours.pooled, want.pooler_output)


def test_vilt(tmp_path):
    config = transformers.ViltConfig(
        vocab_size=V, num_hidden_layers=2, max_position_embeddings=16, image_size=32, patch_size=8, **COMMON
    )
    ref = save(transformers.ViltModel(config), tmp_path)
    model = import_preset("vilt", tmp_path, "data.image_size=32", "data.max_text_len=16")
    ids, mask = text_inputs()
    pixels = torch.rand(B, 3, 32, 32) * 2 - 1  # drawn after save()'s seed, as the figures in docs/pretrained.md were
    with torch.no_grad():
        torch.manual_seed(123)  # HF ViLT visits the 16 patches in a random order (torch.multinomial) ...
        want = ref(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, pixel_mask=torch.ones(B, 32, 32, dtype=torch.long)
        )
        torch.manual_seed(123)  # ... which is replayed here to line the image tokens up
        order = torch.stack([torch.multinomial(torch.ones(16), 16) for _ in range(B)])  # (B, 16)
        joint = model.fuse(model.encode_text(ids, mask), model.encode_image({"pixel_values": pixels}))
    image = joint.image_tokens  # (B, 1 + 16, D): [CLS] then patches in raster order
    image = torch.cat([image[:, :1], torch.stack([image[b, 1 + order[b]] for b in range(B)])], dim=1)
    check("vilt", torch.cat([joint.text_tokens, image], dim=1), want.last_hidden_state)
    check("vilt", joint.pooled, want.pooler_output)


def test_clip(tmp_path):
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=V,
            max_position_embeddings=16,
            bos_token_id=V - 2,
            eos_token_id=V - 1,
            pad_token_id=0,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    ref = save(transformers.CLIPModel(config), tmp_path)
    model = import_preset("clip", tmp_path, "data.image_size=32", "data.max_text_len=16")
    ids, mask = text_inputs()
    ids = clip_text(ids, mask, V)  # BOS first, EOS ends every sequence, as CLIP's tokenizer does
    pixels = torch.rand(B, 3, 32, 32) * 2 - 1  # drawn after save()'s seed, as the figures in docs/pretrained.md were
    with torch.no_grad():
        text, image = model.encode_text(ids, mask), model.encode_image({"pixel_values": pixels})
        want_t = ref.text_model(input_ids=ids, attention_mask=mask)
        want_v = ref.vision_model(pixel_values=clip_pixels(pixels))  # the encoder re-normalises [-1, 1] itself
        real = mask.bool()
        check("clip", text.tokens[real], want_t.last_hidden_state[real])
        check("clip", text.pooled, want_t.pooler_output)  # EOS token after final_layer_norm
        check("clip", image.pooled, want_v.pooler_output)  # post_layernorm([CLS])
        check("clip", image.tokens, ref.vision_model.post_layernorm(want_v.last_hidden_state))
        full = ref(
            input_ids=ids, attention_mask=mask, pixel_values=clip_pixels(pixels)
        )  # the projections stay in HF (ITC has its own)
        normalize = torch.nn.functional.normalize
        check("clip", normalize(ref.text_projection(text.pooled), dim=-1), full.text_embeds)
        check("clip", normalize(ref.visual_projection(image.pooled), dim=-1), full.image_embeds)


def regions(F=12, R=5, seed=0):
    return region_inputs(B, R, F, seed)  # the second example's last two regions padded


def test_visualbert(tmp_path):
    config = transformers.VisualBertConfig(
        vocab_size=V, num_hidden_layers=2, max_position_embeddings=16, visual_embedding_dim=12, **COMMON
    )
    ref = save(transformers.VisualBertModel(config), tmp_path)
    model = import_preset("visualbert", tmp_path, "encoder/vision=region_feats", "data.max_text_len=16")
    ids, mask = text_inputs()
    batch = regions()
    with torch.no_grad():
        joint = model.fuse(model.encode_text(ids, mask), model.encode_image(batch))
        want = ref(
            input_ids=ids,
            attention_mask=mask,
            visual_embeds=batch["region_feats"],
            visual_attention_mask=batch["region_mask"].long(),
        )
    real = torch.cat([mask.bool(), batch["region_mask"]], dim=1)  # compare real tokens (padding is free)
    check("visualbert", torch.cat([joint.text_tokens, joint.image_tokens], dim=1)[real], want.last_hidden_state[real])
    check("visualbert", joint.pooled, want.pooler_output)


def test_lxmert(tmp_path):
    config = transformers.LxmertConfig(
        vocab_size=V, l_layers=2, x_layers=2, r_layers=1, max_position_embeddings=16, visual_feat_dim=12, **COMMON
    )
    ref = save(transformers.LxmertModel(config), tmp_path)
    model = import_preset("lxmert", tmp_path, "encoder/vision=region_feats", "data.max_text_len=16")
    ids, mask = text_inputs()
    batch = regions()
    with torch.no_grad():
        joint = model.fuse(model.encode_text(ids, mask), model.encode_image(batch))
        want = ref(
            input_ids=ids,
            attention_mask=mask,
            visual_feats=batch["region_feats"],
            visual_pos=batch["region_boxes"],
            visual_attention_mask=batch["region_mask"].long(),
        )
    check("lxmert", joint.text_tokens[mask.bool()], want.language_output[mask.bool()])
    check("lxmert", joint.image_tokens[batch["region_mask"]], want.vision_output[batch["region_mask"]])
    check("lxmert", joint.pooled, want.pooled_output)


def test_checkpoint_needs_the_matching_parts(tmp_path):
    config = transformers.ViltConfig(
        vocab_size=V, num_hidden_layers=1, max_position_embeddings=16, image_size=32, patch_size=8, **COMMON
    )
    transformers.ViltModel(config).save_pretrained(tmp_path)
    with pytest.raises(ImportConfigError, match="fusion is mmbench.models.fusion.none.NoFusion"):
        import_preset("clip", tmp_path, "data.image_size=32", "data.max_text_len=16")


def test_uncached_hub_id_fails_fast_offline():
    code = "from mmbench.models.convert import PretrainedInit\nPretrainedInit.resolve('mmbench-tests/no-such-vilt')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "not in the Hugging Face cache" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr, proc.stderr[-2000:]


def test_init_from_trains_end_to_end_at_another_image_size(tmp_path, tiny_cfg, caplog):
    """A ViLT checkpoint for 32px images runs on 48px Shapes (positions interpolated at import),
    with the checkpoint's widths for the objective heads and its vocabulary for MLM."""
    config = transformers.ViltConfig(
        vocab_size=1000, num_hidden_layers=1, max_position_embeddings=40, image_size=32, patch_size=8, **COMMON
    )
    transformers.ViltModel(config).save_pretrained(tmp_path / "vilt")
    cfg = tiny_cfg("model=vilt", f"model.init_from={tmp_path / 'vilt'}", "trainer.limit_train_batches=2")
    with caplog.at_level("INFO", logger="mmbench.models.convert"):
        record = run(cfg)
    assert record["status"] == "completed"
    assert any("model.init_from" in r.message and "loaded" in r.message for r in caplog.records)
