"""data/tokenizer=hf: a pretrained tokenizer from a local directory or tokenizer.json (no network)."""

from __future__ import annotations

import time

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from mmbench import hub
from mmbench.data import hf
from mmbench.data import tokenizer as tokenization
from mmbench.data.datamodule import DataError
from mmbench.data.shapes import COLORS, NUMBER_WORDS, PLURALS, SHAPES, SIZES
from mmbench.pipeline import run

WORDS = sorted(
    {
        *COLORS,
        *SHAPES,
        *PLURALS.values(),
        *SIZES,
        *NUMBER_WORDS,
        "a",
        "an",
        "the",
        "there",
        "is",
        "are",
        "of",
        "left",
        "right",
        "above",
        "below",
        "to",
        "what",
        "color",
        "shape",
        "object",
        "objects",
        "image",
        "shows",
        "contains",
        "and",
        "how",
        "many",
        "yes",
        "no",
        "?",
        ",",
    }
)


@pytest.fixture
def bert_dir(tmp_path):
    """A tiny BERT WordPiece tokenizer saved with save_pretrained (what a downloaded hub id looks like)."""
    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    out = tmp_path / "tiny-bert"
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(str(out))
    # a vocab.txt directory (like older hub repos): forces the transformers AutoTokenizer path
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab))
    (out / "tokenizer.json").unlink()
    return out


def test_pretrained_tokenizer_from_a_directory(bert_dir):
    tok, special = tokenization.build(
        "hf", cache_dir=bert_dir, texts=None, vocab_size=0, max_len=8, name_or_path=str(bert_dir)
    )
    assert (special.pad, special.bos, special.eos, special.mask) == (0, 2, 3, 4)  # [PAD] [CLS] [SEP] [MASK]
    assert set(special.all) == {0, 1, 2, 3, 4}
    a, b = tok.encode_batch(["a red circle", "there are two small blue squares left of the circle"])
    assert a.ids[0] == 2 and a.ids[a.attention_mask.index(0) - 1] == 3 and a.ids[-1] == 0  # [CLS] .. [SEP] [PAD]
    assert len(b.ids) == 8 and b.ids[-1] == 3  # truncated to max_len, specials kept
    assert tok.get_vocab_size() == 5 + len(WORDS)


def test_tokenizer_json_without_pad_and_mask_gets_them_added(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded, special = tokenization.build(
        "hf", cache_dir=tmp_path, texts=None, vocab_size=0, max_len=16, name_or_path=str(path)
    )
    assert (special.bos, special.eos) == (0, 1)
    assert special.pad == len(vocab) and special.mask == len(vocab) + 1 and loaded.get_vocab_size() == len(vocab) + 2


def test_shapes_trains_with_a_pretrained_tokenizer(tiny_cfg, bert_dir):
    cfg = tiny_cfg("data/tokenizer=hf", f"data.tokenizer.name_or_path={bert_dir}", "objective=[itc,mlm,vqa]")
    dm = instantiate(cfg.data)
    dm.setup()
    assert dm.info.vocab_size == 5 + len(WORDS) and dm.info.mask_id == 4 and dm.info.pad_id == 0
    batch = next(iter(dm.val_dataloader()))
    assert (batch["input_ids"][:, 0] == 2).all() and (batch["input_ids"] != 1).float().mean() > 0.9  # few [UNK]
    with open_dict(cfg):
        cfg.test = False  # fit + validate is enough here; test-time evaluation is covered by test_train
    record = run(cfg)
    assert record["status"] == "completed" and "val/mlm/acc" in record["metrics"]


def test_uncached_hub_tokenizer_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.HUB_PROBE_TIMEOUT_S: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.time()
    with pytest.raises(
        hf.HubUnavailableError, match="tokenizer 'mmbench-tests/no-such-tokenizer' is not in the local HF cache"
    ):
        tokenization.build(
            "hf",
            cache_dir=tmp_path,
            texts=None,
            vocab_size=0,
            max_len=8,
            name_or_path="mmbench-tests/no-such-tokenizer",
        )
    assert time.time() - start < 20


def test_tokenizer_config_errors_are_clear(tiny_cfg, tmp_path):
    with pytest.raises(tokenization.TokenizerError, match="needs data.tokenizer.name_or_path"):
        tokenization.build("hf", cache_dir=tmp_path, texts=None, vocab_size=0, max_len=8)
    with pytest.raises(tokenization.TokenizerError, match="does not exist"):
        tokenization.build(
            "hf", cache_dir=tmp_path, texts=None, vocab_size=0, max_len=8, name_or_path=str(tmp_path / "nowhere")
        )
    dm = instantiate(tiny_cfg("data.tokenizer.kind=nope").data)
    with pytest.raises(DataError, match="unknown tokenizer kind 'nope'"):
        dm.setup()
