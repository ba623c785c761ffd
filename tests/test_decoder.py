"""Decoder language models (mmbench/models/decoder.py): HF parity for GPT-2, OPT and Llama through
`HFDecoder`, GPT-2 weight import into `GPTDecoder` (`model.init_from`), causality and padding.

Every HF checkpoint is a tiny random model the test writes with `save_pretrained`; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmbench.hub_parity import build_imported  # noqa: E402
from mmbench.models.decoder import GPTDecoder, HFDecoder, causal_mask  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402

ATOL = 1e-4
V, B, T = 99, 3, 9

CONFIGS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ),
    # word_embed_proj_dim != hidden_size: OPT-350m's project_in / project_out around the decoder
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
        )
    ),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ),
}


def save(model, path):
    torch.manual_seed(0)
    for p in model.parameters():  # HF inits LayerNorms to (1, 0) and biases to 0: randomise all
        torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(path)
    return model.eval()


def right_padded(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) (B, T): row 1 padded from 6 on, row 2 from 3 on (pad id 0: a real token id too)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_hf_decoder_equals_the_causal_lm_at_real_positions(family, tmp_path):
    ref = save(CONFIGS[family](), tmp_path)
    lm = HFDecoder(str(tmp_path), vocab_size=V).eval()
    ids, mask = right_padded()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        ours = lm.logits(lm.run(lm.embed(ids), mask.bool()))
    real = mask.bool()
    assert ours.shape == want.shape
    assert (ours - want)[real].abs().max().item() <= ATOL
    # the interface: embeddings of the input table, width H, positions from the config
    assert lm.word_embeddings is ref.get_input_embeddings() or torch.equal(
        lm.word_embeddings.weight, ref.get_input_embeddings().weight
    )
    assert lm.hidden_size == lm.embed(ids).shape[-1] == lm.word_embeddings.embedding_dim
    assert lm.max_len == 64 and lm.vocab_size == V


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # tied and untied heads
def test_hf_decoder_grows_for_added_special_tokens_and_refuses_a_longer_sequence(family, tmp_path, caplog):
    ref = save(CONFIGS[family](), tmp_path)
    lm = HFDecoder(str(tmp_path), vocab_size=V + 2).eval()  # e.g. [PAD] and [MASK] added by mmbench
    assert "grow by 2 rows" in caplog.text
    assert lm.vocab_size == V + 2 and lm.word_embeddings.num_embeddings == V + 2
    torch.testing.assert_close(lm.word_embeddings.weight[:V], ref.get_input_embeddings().weight, atol=0, rtol=0)
    ids, mask = right_padded()
    with torch.no_grad():
        logits = lm.logits(lm.run(lm.embed(ids), mask.bool()))  # (B, T, V + 2)
        want = ref(input_ids=ids, attention_mask=mask).logits
    assert logits.shape[-1] == V + 2
    assert (logits[..., :V] - want)[mask.bool()].abs().max().item() <= ATOL  # old ids: the same function
    with pytest.raises(ValueError, match="exceeds the language model's 64 positions"):
        lm.run(torch.zeros(1, 65, lm.hidden_size), torch.ones(1, 65, dtype=torch.bool))


def test_gpt2_imports_into_gpt_decoder_with_parity(tmp_path):
    """model=llava model.init_from=<GPT-2 dir>: the language model part computes GPT2LMHeadModel's logits."""
    config = transformers.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=48, n_inner=80, layer_norm_epsilon=1e-6
    )
    ref = save(transformers.GPT2LMHeadModel(config), tmp_path)
    model = build_imported(compose_cfg(["model=llava", f"model.init_from={tmp_path}", "model.sizes.tiny.heads=4"]), V)
    lm = model.language_model
    assert isinstance(lm, GPTDecoder) and len(lm.blocks) == 3 and lm.max_len == 48 and model.dim == 32
    ids, mask = right_padded()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        ours = lm.logits(lm.run(lm.embed(ids), mask.bool()))
    assert (ours - want)[mask.bool()].abs().max().item() <= ATOL
    assert lm.logits(torch.zeros(1, 32)).shape == (1, V)  # tied head: no separate table
    assert not any(n.startswith("lm_head") for n, _ in lm.named_parameters())


def test_gpt2_import_refuses_a_model_without_a_gpt_decoder(tmp_path):
    from mmbench.models.convert import ImportConfigError

    save(CONFIGS["gpt2"](), tmp_path)
    with pytest.raises(ImportConfigError, match="language_model is None, needs mmbench.models.decoder.GPTDecoder"):
        build_imported(compose_cfg(["model=vilt", f"model.init_from={tmp_path}"]), V)


def gpt(**kw) -> GPTDecoder:
    torch.manual_seed(0)
    return GPTDecoder(**{"vocab_size": V, "dim": 32, "depth": 2, "heads": 4, "max_len": 32, **kw}).eval()


def test_gpt_decoder_is_causal_over_any_embedding_sequence():
    lm = gpt()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 32, generator=g)  # e.g. 4 image embeddings then 8 text embeddings
    mask = torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        base = lm.run(x, mask)
        for t in (0, 5, 10):
            changed = x.clone()
            changed[:, t + 1 :] = torch.randn(2, 11 - t, 32, generator=g)
            new = lm.run(changed, mask)
            torch.testing.assert_close(new[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-6)
            assert (new[:, t + 1 :] - base[:, t + 1 :]).abs().amax(-1).gt(1e-4).all(), t


def test_gpt_decoder_positions_are_applied_inside_and_padding_changes_nothing_real():
    lm = gpt()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 32, generator=g)
    with torch.no_grad():
        # positions 0..L-1 inside run: the same embedding at two positions gives two states
        same = lm.run(x[:, :1].expand(1, 2, 32).contiguous(), torch.ones(1, 2, dtype=torch.bool))
        assert (same[0, 0] - same[0, 1]).abs().max() > 1e-3
        alone = lm.run(x, torch.ones(1, 6, dtype=torch.bool))
        padded = torch.cat([x, torch.randn(1, 3, 32, generator=g)], 1)  # right padding, random content
        out = lm.run(padded, torch.tensor([[True] * 6 + [False] * 3]))
        torch.testing.assert_close(out[:, :6], alone, atol=1e-6, rtol=1e-6)
        # padded tokens *before* real ones (padded image tokens): their content never reaches the real states,
        # and the first one, which has no real key to attend to, stays finite (causal_mask lets it see itself)
        holes_mask = torch.tensor([[False, False] + [True] * 6])
        first = lm.run(torch.cat([torch.randn(1, 2, 32, generator=g), x], 1), holes_mask)
        second = lm.run(torch.cat([torch.randn(1, 2, 32, generator=g), x], 1), holes_mask)
        assert torch.isfinite(first).all()
        torch.testing.assert_close(first[:, 2:], second[:, 2:], atol=1e-6, rtol=1e-6)


def test_causal_mask_layout():
    m = causal_mask(torch.tensor([[True, False, True]]))[0, 0]  # (3, 3)
    want = torch.tensor([[True, False, False], [True, True, False], [True, False, True]])
    assert torch.equal(m, want)


def test_gpt_decoder_init_and_tied_head():
    lm = gpt(depth=4)
    assert lm.logits(torch.zeros(2, 5, 32)).shape == (2, 5, V)
    torch.testing.assert_close(
        lm.logits(lm.word_embeddings.weight[:1]), lm.word_embeddings.weight[:1] @ lm.word_embeddings.weight.T
    )
    assert abs(lm.word_embeddings.weight.std().item() - 0.02) < 0.003
    proj = lm.blocks[0].sublayers["self_attn"].proj.weight  # residual projections: 0.02 / sqrt(2 * depth)
    assert abs(proj.std().item() - 0.02 / 8**0.5) < 0.002
    assert all(b.abs().sum() == 0 for n, b in lm.named_parameters() if n.endswith(".bias"))
    with pytest.raises(ValueError, match="exceeds the language model's 32 positions"):
        lm.run(torch.zeros(1, 33, 32), torch.ones(1, 33, dtype=torch.bool))
