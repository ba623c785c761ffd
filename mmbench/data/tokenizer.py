"""WordPiece tokenizer trained offline on the training text with HF `tokenizers`.

The trained tokenizer is saved as `tokenizer-<vocab_size>.json` beside the cached dataset, so
every run on the same data uses the same ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS, SEP, MASK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK, BOS, EOS]  # ids 0..6 in this order


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))]
    )
    return tok


def load_or_train(path: str | os.PathLike, texts: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """Load the tokenizer at `path`, or train it on `texts` and save it there (atomically)."""
    path = Path(path)
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = train_wordpiece(texts, vocab_size)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return tok


def configure(tok: Tokenizer, max_len: int) -> Tokenizer:
    """Pad to the longest sequence of a batch and truncate to `max_len` tokens."""
    tok.enable_padding(pad_id=tok.token_to_id(PAD), pad_token=PAD)
    tok.enable_truncation(max_length=max_len)
    return tok
