"""The trained WordPiece tokenizer (`kind="trained"`, the Shapes default): the same texts give the same
tokenizer in every process (tokenizers' own trainer does not: huggingface/tokenizers#1794), specials
first, the data's words whole, unseen words as characters."""

from __future__ import annotations

import subprocess
import sys

from mmbench.data.datamodule import DataInfo
from mmbench.data.tokenizer import SPECIAL_TOKENS, train_wordpiece, trained_special_ids

TEXTS = [
    "a red circle left of a blue square",
    "there are two objects",
    "which is further left, the red circle or the blue square?",
    "two circles and a square",
    "a small green triangle",
    "is there a yellow star?",
] * 20  # many equal counts: the ties that made tokenizers' trainer vary between processes

_TRAIN = f"""
from mmbench.data.tokenizer import train_wordpiece
print(train_wordpiece({TEXTS!r}, 1000).to_str())
"""


def test_the_same_texts_give_the_same_tokenizer_in_every_process():
    runs = {
        subprocess.run([sys.executable, "-c", _TRAIN], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(runs) == 1 and train_wordpiece(TEXTS, 1000).to_str() + "\n" in runs


def test_specials_first_words_whole_unseen_words_as_characters():
    tok = train_wordpiece(TEXTS, 1000)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.encode("Which is further left, the red circle?").tokens == [
        "[CLS]", "which", "is", "further", "left", ",", "the", "red", "circle", "?", "[SEP]"
    ]  # fmt: skip
    assert tok.encode("four cirlces").tokens == [
        "[CLS]", "f", "##o", "##u", "##r", "c", "##i", "##r", "##l", "##c", "##e", "##s", "[SEP]"
    ]  # fmt: skip
    assert tok.encode("a [MASK] circle").tokens == ["[CLS]", "a", "[MASK]", "circle", "[SEP]"]
    assert tok.decode(tok.encode("two circles and a square").ids) == "two circles and a square"
    special = trained_special_ids(tok)
    assert (special.pad, special.mask) == (0, 4)
    # what builders told "the data" without data or a tokenizer (param counts, imports) is these ids
    info = DataInfo.of_vocab(1000, max_text_len=8, image_size=16)
    assert (info.pad_id, info.mask_id, info.bos_id, info.eos_id) == (
        special.pad,
        special.mask,
        special.bos,
        special.eos,
    )
    assert tuple(info.special_ids) == special.all


def test_a_small_vocabulary_keeps_the_alphabet_and_the_most_frequent_words():
    tok = train_wordpiece(
        ["a a a red red circle"], vocab_size=len(SPECIAL_TOKENS) + 2 * 7 + 1
    )  # 7 letters: a c d e i l r
    vocab = tok.get_vocab()
    assert "red" in vocab and "circle" not in vocab and "##c" in vocab  # 1 word of room: the most frequent
